"""lm-evaluation-harness against the server, on task files this test writes: log-likelihood multiple choice through
`local-completions` (token-id requests batched, and text requests) equals lm-eval's own `hf` model on the same
weights; generate-until through `local-completions` and `local-chat-completions` returns what the model says."""

from __future__ import annotations

import json

import lm_eval  # noqa: E402
import pytest

from alignkit import GenerationConfig, Message  # noqa: E402
from alignkit.methods import MethodOptions, apply_method  # noqa: E402
from alignkit.server.app import build_app  # noqa: E402
from alignkit.server.service import Service  # noqa: E402
from tests.support.openai_server import ServerThread  # noqa: E402

MC = [{"question": "The quick brown", "choices": [" fox", " dog", " cat"], "answer": 0},
      {"question": "Once upon a", "choices": [" time", " hill"], "answer": 0},
      {"question": "What is 2 plus 2?", "choices": [" 4", " four", " 5"], "answer": 0}]
GEN = [{"question": "The quick brown", "answer": "fox"}, {"question": "Name a colour.", "answer": "blue"}]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    (root / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC))
    (root / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GEN))
    (root / "mc.yaml").write_text(f"""task: alignkit_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    (root / "gen.yaml").write_text(f"""task: alignkit_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'gen.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["<<never>>"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(root))


def _samples(result, task):
    return result["samples"][task]


def _run(tasks, model, args, task, **kw):
    return lm_eval.simple_evaluate(model=model, model_args=args, tasks=[task], task_manager=tasks, log_samples=True,
                                   **kw)


@pytest.fixture(scope="module")
def hf_loglikelihoods(tasks, tiny_dir):
    """lm-eval's own transformers model on the same weights (with BOS, as alignkit's backend scores)."""
    r = _run(tasks, "hf", f"pretrained={tiny_dir['base']},add_bos_token=True,dtype=float32", "alignkit_mc",
             device="cpu")
    return [[x[0][0] for x in s["resps"]] for s in _samples(r, "alignkit_mc")]


@pytest.mark.parametrize("tokenized", [True, False])
def test_local_completions_loglikelihoods_equal_lm_evals_hf_model(tokenized, tasks, tiny_dir, tiny_base,
                                                                   hf_loglikelihoods):
    model = apply_method(tiny_base, MethodOptions(method="none"))
    with ServerThread(build_app(Service(model, "raw"))) as srv:
        args = (f"model=raw,base_url={srv.url}/completions,tokenizer={tiny_dir['base']},"
                f"tokenizer_backend=huggingface,tokenized_requests={tokenized},batch_size=2,max_retries=1,"
                "add_bos_token=False")
        r = _run(tasks, "local-completions", args, "alignkit_mc")
    got = [[x[0][0] for x in s["resps"]] for s in _samples(r, "alignkit_mc")]
    assert len(got) == len(MC) and [len(g) for g in got] == [len(m["choices"]) for m in MC]
    for g, h in zip(got, hf_loglikelihoods):
        assert g == pytest.approx(h, abs=1e-3)


def test_generate_until_through_completions_and_chat(tasks, tiny_base, tiny_aligned):
    raw = apply_method(tiny_base, MethodOptions(method="none"))
    with ServerThread(build_app(Service(raw, "raw"))) as srv:
        r = _run(tasks, "local-completions", f"model=raw,base_url={srv.url}/completions,tokenized_requests=False,"
                 "tokenizer_backend=None,max_retries=1", "alignkit_gen")
    got = [s["resps"][0][0] for s in _samples(r, "alignkit_gen")]
    assert got == [raw.generate([g["question"]], GenerationConfig(max_new_tokens=6))[0].text for g in GEN]
    chat = apply_method(tiny_aligned, MethodOptions(method="template"))
    with ServerThread(build_app(Service(chat, "chat"))) as srv:
        r = _run(tasks, "local-chat-completions", f"model=chat,base_url={srv.url}/chat/completions,max_retries=1,tokenizer_backend=None",
                 "alignkit_gen", apply_chat_template=True)
    got = [s["resps"][0][0] for s in _samples(r, "alignkit_gen")]
    want = [chat.generate([[Message("user", g["question"])]], GenerationConfig(max_new_tokens=6))[0].text for g in GEN]
    assert got == want
