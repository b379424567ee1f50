"""Structured output on tiny real models: a JSON schema, any JSON object, a regex, choices and a Lark grammar are
enforced in alignkit's token loop (under any method: raw, in-context alignment, DeRa, best-of-N), and over the
server through response_format and vLLM's guided_* fields; what cannot be enforced is refused, never ignored."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from alignkit import GenerationConfig
from alignkit.errors import AlignkitError, InputError
from alignkit.methods import MethodOptions, apply_method
from alignkit.structured import Constraint, from_request

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "blue", "green"]},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["ok", "colour", "n"], "additionalProperties": False}
PROMPTS = ["The quick brown", "Once upon a time", "Hello"]


@pytest.fixture(scope="module")
def raw(tiny_base):
    return apply_method(tiny_base, MethodOptions(method="none"))


@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_a_json_schema_is_always_met(raw, temperature):
    cfg = GenerationConfig(max_new_tokens=60, temperature=temperature, seed=2, constraint=Constraint.json_schema(SCHEMA))
    for comp in raw.generate(PROMPTS, cfg):
        assert comp.finish_reason == "stop", comp.text
        jsonschema.validate(json.loads(comp.text), SCHEMA)


def test_regex_choice_lark_and_any_json_object(raw):
    out = raw.generate(PROMPTS, GenerationConfig(max_new_tokens=10, constraint=Constraint("regex", "[a-c]{3}-[0-9]")))
    assert all(re.fullmatch(r"[a-c]{3}-[0-9]", c.text) and c.finish_reason == "stop" for c in out)
    out = raw.generate(PROMPTS, GenerationConfig(max_new_tokens=10, temperature=1.5, seed=1,
                                                 constraint=Constraint.choice(["yes", "no", "maybe"])))
    assert all(c.text in ("yes", "no", "maybe") for c in out)
    lark = 'start: "A" ("B" | "C")+ "."'
    out = raw.generate(PROMPTS, GenerationConfig(max_new_tokens=12, constraint=Constraint("lark", lark)))
    assert all(re.fullmatch(r"A[BC]+\.?", c.text) for c in out)
    obj = raw.generate(["{"], GenerationConfig(max_new_tokens=40, constraint=Constraint("json_object")))[0]
    assert obj.text.startswith("{")  # an object, possibly cut by the token limit
    if obj.finish_reason == "stop":
        assert isinstance(json.loads(obj.text), dict)


def test_the_constraint_passes_through_methods(tiny_base, tiny_aligned, tiny_dir):
    from alignkit.methods.best_of_n import BestOfN
    from alignkit.methods.dera import DeRa
    from tests.methods.test_best_of_n import CountScorer

    cfg = GenerationConfig(max_new_tokens=60, constraint=Constraint.json_schema(SCHEMA), seed=4, temperature=1.0)
    urial = apply_method(tiny_base, MethodOptions(method="urial", template="urial-k0"))
    dera = DeRa(apply_method(tiny_base, MethodOptions(method="none")),
                apply_method(tiny_aligned, MethodOptions(method="none")), 0.5)
    bon = BestOfN(apply_method(tiny_base, MethodOptions(method="none")), CountScorer(char="e"), 3)
    for model in (urial, dera, bon):
        comp = model.generate(["Name a colour."], cfg)[0]
        jsonschema.validate(json.loads(comp.text), SCHEMA)


def test_bad_constraints_are_clear_errors():
    with pytest.raises(InputError, match="invalid regex"):
        Constraint("regex", "[a-").grammar()
    with pytest.raises(InputError, match="invalid json schema"):
        Constraint.json_schema({"type": "nonsense"}).grammar()
    with pytest.raises(InputError, match="give one of"):
        from_request({"guided_regex": "a", "guided_choice": ["a"]})
    with pytest.raises(InputError, match="response_format"):
        from_request({"response_format": {"type": "xml"}})
    assert from_request({"response_format": {"type": "text"}}) is None


def test_backends_without_alignkits_token_loop_refuse_it(tiny_aligned):
    from tests.support.openai_server import ServerThread, build_app

    with ServerThread(build_app(tiny_aligned, "t")) as srv:
        from alignkit import load_model

        remote = load_model(f"openai:t@{srv.url}")
        with pytest.raises(AlignkitError, match="cannot enforce"):
            remote.generate(["Hi"], GenerationConfig(max_new_tokens=2, constraint=Constraint("regex", "a+")))


def test_structured_output_over_the_server(raw):
    import openai

    from alignkit.server.app import build_app
    from alignkit.server.service import Service
    from tests.support.openai_server import ServerThread

    with ServerThread(build_app(Service(raw, "raw"))) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        r = c.completions.create(model="raw", prompt=PROMPTS, max_tokens=60, temperature=0.9, seed=3, n=2,
                                 extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                     "name": "t", "schema": SCHEMA}}})
        for choice in r.choices:
            jsonschema.validate(json.loads(choice.text), SCHEMA)
        r = c.completions.create(model="raw", prompt="Hi", max_tokens=5, extra_body={"guided_choice": ["up", "down"]})
        assert r.choices[0].text in ("up", "down")
        s = "".join(ch.choices[0].text for ch in c.completions.create(
            model="raw", prompt="Hi", max_tokens=8, stream=True, extra_body={"guided_regex": "[0-9]{4}"}))
        assert re.fullmatch(r"[0-9]{4}", s)
        with pytest.raises(openai.BadRequestError, match="invalid json schema"):
            c.completions.create(model="raw", prompt="Hi", max_tokens=2,
                                 extra_body={"guided_json": {"type": "nonsense"}})


def test_the_llamacpp_backend_enforces_it_too(tiny_gguf):
    from alignkit import load_model

    model = apply_method(load_model(f"llamacpp:{tiny_gguf['llama']}"), MethodOptions(method="none"))
    for temperature in (0.0, 1.2):
        cfg = GenerationConfig(max_new_tokens=60, temperature=temperature, seed=5, constraint=Constraint.json_schema(SCHEMA))
        for comp in model.generate(PROMPTS, cfg):
            assert comp.finish_reason == "stop", comp.text
            jsonschema.validate(json.loads(comp.text), SCHEMA)
    out = model.generate(PROMPTS, GenerationConfig(max_new_tokens=8, constraint=Constraint("regex", "[a-c]{3}")))
    assert all(re.fullmatch("[a-c]{3}", c.text) for c in out)


def test_the_command_line_flags(tiny_dir, tmp_path, capsys):
    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(tiny_dir["base"]), "--method", "none", "--input", str(inp), "--output",
                 str(out), "--max-new-tokens", "60", "--json-schema", str(schema)]) == 0
    for row in (json.loads(x) for x in out.read_text().splitlines()):
        jsonschema.validate(json.loads(row["output"]), SCHEMA)
        assert row["provenance"]["generation"]["constraint"]["kind"] == "json_schema"
    capsys.readouterr()
    assert main(["generate", "--model", "./no-such-model", "--input", str(inp), "--output", str(tmp_path / "x.jsonl"),
                 "--regex", "[a-"]) == 2
    assert "invalid regex" in capsys.readouterr().err
    assert main(["generate", "--model", "./no-such-model", "--input", str(inp), "--output", str(tmp_path / "y.jsonl"),
                 "--regex", "a", "--choice", "b"]) == 2
    assert "give one of" in capsys.readouterr().err
