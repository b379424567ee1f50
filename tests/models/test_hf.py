"""Invariants of the transformers backend on tiny real models (float64, so equal math gives equal tokens)."""

from __future__ import annotations

import pytest
import torch

from alignkit import CapabilityError, GenerationConfig, Message, load_model
from alignkit.errors import ContextLengthError

PREFIX = (
    "# Query:\nHow do I boil an egg?\n# Answer:\nPut the egg in boiling water for nine minutes. "
    "Here are three tips: 1. Sleep well. 2. Eat vegetables. 3. Walk every day.\n"
)
QUERIES = ["# Query:\nThe quick", "# Query:\nWhat is photosynthesis and why?", "# Query:\nThank"]


def test_prefix_reuse_is_token_identical_to_recompute(tiny_base):
    prompts = [PREFIX + q for q in QUERIES]
    assert len(tiny_base.encode_prompt(PREFIX)) > 2 * 8  # longer than the tiny models' sliding window
    for cfg in (GenerationConfig(max_new_tokens=12),
                GenerationConfig(max_new_tokens=12, temperature=0.9, top_k=50, top_p=0.95, seed=3)):
        tiny_base.engine.store.clear()
        reused = tiny_base.generate(prompts, cfg)
        assert tiny_base.engine.store.ids, "the shared prefix was not stored"
        recomputed = tiny_base.generate(prompts, cfg, reuse_prefix=False)
        one_by_one = [tiny_base.generate([p], cfg, reuse_prefix=False)[0] for p in prompts]
        assert [c.token_ids for c in reused] == [c.token_ids for c in recomputed]
        assert [c.token_ids for c in reused] == [c.token_ids for c in one_by_one]


def test_stored_prefix_is_reused_across_calls(tiny_base):
    store = tiny_base.engine.store
    store.clear()
    cfg = GenerationConfig(max_new_tokens=6)
    first = tiny_base.generate([PREFIX + QUERIES[0]], cfg)
    hits = store.hits
    second = tiny_base.generate([PREFIX + QUERIES[1]], cfg)
    assert store.hits == hits + 1
    assert second[0].token_ids == tiny_base.generate([PREFIX + QUERIES[1]], cfg, reuse_prefix=False)[0].token_ids
    assert first[0].token_ids == tiny_base.generate([PREFIX + QUERIES[0]], cfg, reuse_prefix=False)[0].token_ids


def test_greedy_equals_transformers_generate(tiny_dir):
    """An independent reference: transformers' own generate loop."""
    m = load_model(str(tiny_dir["llama"]), dtype="float64")
    for prompt in ["The quick brown", PREFIX + QUERIES[1]]:
        ids = torch.tensor([m.encode_prompt(prompt)])
        ref = m.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
        ours = m.generate([prompt], GenerationConfig(max_new_tokens=10))[0]
        assert list(ours.token_ids) == ref[0, ids.shape[1]:].tolist()


def test_sampling_does_not_depend_on_batch_company(tiny_base):
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=42)
    alone = tiny_base.generate(["The quick"], cfg)[0]
    together = tiny_base.generate(["Thank you", "The quick", "def add"], cfg)[1]
    assert alone.token_ids == together.token_ids


def test_repetition_penalty_looks_at_the_answer_not_the_prompt(tiny_base):
    prompt = "The quick brown fox jumps over the lazy dog. " * 3
    plain = tiny_base.generate([prompt], GenerationConfig(max_new_tokens=1))[0]
    penal = tiny_base.generate([prompt], GenerationConfig(max_new_tokens=1, repetition_penalty=5.0))[0]
    assert plain.token_ids == penal.token_ids  # nothing generated yet: nothing to penalise


@pytest.mark.parametrize("scope", ["answer", "all"])
def test_repetition_penalty_scope_equals_a_direct_computation(tiny_base, scope):
    """Scope ``answer`` penalises the answer's own tokens, ``all`` the prompt's too (URIAL's original setting):
    each equals a plain greedy loop that recomputes the logits and applies the penalty by hand."""
    prompt, penalty = "The quick brown fox jumps over the lazy dog. " * 2, 2.5
    got = tiny_base.generate([prompt], GenerationConfig(max_new_tokens=12, repetition_penalty=penalty,
                                                        repetition_penalty_scope=scope))[0]
    ids = tiny_base.encode_prompt(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(12):
            logits = tiny_base.model(torch.tensor([ids + out])).logits[0, -1].clone()
            for t in set(out if scope == "answer" else ids + out):
                logits[t] = logits[t] * penalty if logits[t] < 0 else logits[t] / penalty
            out.append(int(logits.argmax()))
            if out[-1] in tiny_base.engine.eos_ids:
                break
    assert list(got.token_ids) == out
    other = "all" if scope == "answer" else "answer"
    assert got.token_ids != tiny_base.generate([prompt], GenerationConfig(
        max_new_tokens=12, repetition_penalty=penalty, repetition_penalty_scope=other))[0].token_ids
    with pytest.raises(ValueError, match="repetition_penalty_scope"):
        GenerationConfig(repetition_penalty_scope="prompt")


def test_repetition_penalty_changes_greedy_output(tiny_base):
    plain = tiny_base.generate(["The quick"], GenerationConfig(max_new_tokens=16))[0]
    penal = tiny_base.generate(["The quick"], GenerationConfig(max_new_tokens=16, repetition_penalty=3.0))[0]
    assert plain.token_ids != penal.token_ids
    assert len(set(penal.token_ids)) > len(set(plain.token_ids))


@pytest.mark.parametrize("which", ["base", "llama"])
def test_chunked_scoring_equals_full_forward(tiny_dir, which):
    m = load_model(str(tiny_dir[which]), dtype="float64")
    prompts = ["The quick brown", PREFIX + QUERIES[2]]
    conts = [" fox jumps over the lazy dog.", " you for asking! However, I'm sorry."]
    ranks = lambda lp, tgt: (lp > lp.gather(1, tgt[:, None])).sum(-1).tolist()  # noqa: E731
    m.score_chunk = 3  # several chunks per continuation
    scores = m.score(prompts, conts, top_k=2, reduce=ranks)
    for p, c, sc in zip(prompts, conts, scores):
        pids, cids = m.encode_prompt(p), m.encode(c)
        assert list(sc.token_ids) == cids
        full = m.model(torch.tensor([pids + cids])).logits[0, len(pids) - 1 : -1].log_softmax(-1)
        ref = full.gather(1, torch.tensor(cids)[:, None]).squeeze(1)
        assert torch.allclose(ref, torch.tensor(sc.logprobs, dtype=ref.dtype), atol=1e-10)
        assert list(sc.reduced) == (full > ref[:, None]).sum(-1).tolist()
        assert sc.top_logprobs[0][0][1] == pytest.approx(full[0].max().item(), abs=1e-10)


def test_score_accepts_token_ids_and_empty_continuations(tiny_base):
    ids = tiny_base.encode(" brown fox")
    a, b = tiny_base.score(["The quick", "The quick"], [ids, []])
    assert list(a.token_ids) == ids and len(b) == 0


def test_adapter_changes_the_model_and_merging_keeps_it(tiny_dir):
    base = load_model(str(tiny_dir["base"]), dtype="float64")
    adapted = load_model(str(tiny_dir["base"]), dtype="float64", adapter=str(tiny_dir["adapter"]))
    merged = load_model(str(tiny_dir["adapter"]), dtype="float64", merge_adapter=True)
    conts = [" fox jumps over the lazy dog."]
    lb, la, lm = (m.score(["The quick"], conts)[0].logprobs for m in (base, adapted, merged))
    assert max(abs(x - y) for x, y in zip(lb, la)) > 1e-3
    assert max(abs(x - y) for x, y in zip(la, lm)) < 1e-8
    assert adapted.source["adapter"] == str(tiny_dir["adapter"])


def test_chat_needs_a_template(tiny_base, tiny_aligned):
    msgs = [Message("system", "Be brief."), Message("user", "Hello")]
    with pytest.raises(CapabilityError, match="no chat template"):
        tiny_base.generate([msgs])
    rendered = tiny_aligned.render(msgs)
    assert rendered.endswith("<|assistant|>\n") and "<|system|>\nBe brief." in rendered


def test_prompt_longer_than_context_is_a_clear_error(tiny_base):
    with pytest.raises(ContextLengthError, match="context holds 512"):
        tiny_base.generate(["word " * 600], GenerationConfig(max_new_tokens=2))


def test_generation_stops_at_the_context_limit(tiny_base):
    prompt_len = len(tiny_base.encode_prompt("The quick " * 60))
    comp = tiny_base.generate(["The quick " * 60], GenerationConfig(max_new_tokens=600))[0]
    assert comp.finish_reason == "length"
    assert prompt_len + comp.completion_tokens == 512


def test_info_records_provenance(tiny_aligned):
    info = tiny_aligned.info()
    assert info["backend"] == "hf" and info["dtype"] == "float64" and info["kind"] == "folder"
    assert {"alignkit", "transformers", "torch"} <= set(info)
