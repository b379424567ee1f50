"""Route trees: every registered node kind and the compositions the docs promise pass one interface suite on tiny
models; the same tree written in YAML, in Python and as flags builds the same model; bad trees get clear errors."""

from __future__ import annotations

import json

import pytest
import yaml

import alignkit as ak
from alignkit.errors import AlignkitError, ContextLengthError, InputError
from alignkit.methods import MethodOptions, tree_from_options
from alignkit.methods.tree import NODES, Node, load_tree, parse
from alignkit.models.base import Capabilities, backend_models, walk
from alignkit.types import GenerationConfig, Message

PROMPTS = ["The quick brown", "Tell me a fact", "Name a colour."]
CFG = GenerationConfig(max_new_tokens=6, temperature=0.9, seed=11)


def _compositions(d) -> dict[str, dict]:
    """Every registered kind on its own, and the compositions the README promises (YAML form)."""
    base, aligned, judge = str(d["base"]), str(d["aligned"]), "geval:" + str(d["judge"])
    urial = {"urial": {"model": base, "k": 0}}
    dera = {"dera": {"lam": 0.5, "ref": {"none": {"model": base}}, "aligned": {"template": {"model": aligned}}}}
    return {
        "urial": urial,
        "template": {"template": {"model": aligned}},
        "none": {"none": {"model": base}},
        "auto": {"auto": {"model": aligned}},
        "dera": dera,
        "best-of-n": {"best-of-n": {"scorer": judge, "n": 2, "model": {"none": {"model": base}}}},
        "rewrite": {"rewrite": {"rewriter": aligned, "model": urial}},
        "correct": {"correct": {"corrector": aligned, "model": urial}},
        "best-of-n around dera": {"best-of-n": {"scorer": judge, "n": 2, "model": dera}},
        "rewrite > urial > correct": {"correct": {"corrector": aligned, "model": {"rewrite": {
            "rewriter": aligned, "model": urial}}}},
        "best-of-n between a rewriter and a corrector": {"correct": {"corrector": aligned, "model": {"rewrite": {
            "rewriter": aligned, "model": {"best-of-n": {"scorer": judge, "n": 2, "model": urial}}}}}},
        "dera with a urial aligned side": {"dera": {"lam": 1.5, "ref": {"none": {"model": base}},
                                                    "aligned": urial}},
        "dera of two urial sides under best-of-n, a corrector behind": _flagless(d),
        "proxy": {"proxy": {"alpha": 0.5, "base": {"none": {"model": base}}, "expert": {"template": {"model": aligned}},
                            "antiexpert": {"none": {"model": str(d["llama"])}}}},
        "proxy with a urial expert, a corrector behind": {"correct": {"corrector": aligned, "model": {"proxy": {
            "base": {"none": {"model": base}}, "expert": urial, "antiexpert": {"none": {"model": base}}}}}},
        "eft": {"eft": {"alpha": 1.5, "beta": 0.5, "base": {"none": {"model": base}},
                        "tuned": {"template": {"model": aligned}}, "untuned": {"none": {"model": str(d["llama"])}}}},
        "dexperts": {"dexperts": {"alpha": 2.0, "base": {"none": {"model": base}},
                                  "expert": {"template": {"model": aligned}}, "antiexpert": {"none": {"model": base}}}},
        "args": {"args": {"scorer": judge, "top_k": 3, "weight": 2.0, "model": urial}},
        "args over proxy, a corrector behind": {"correct": {"corrector": aligned, "model": {"args": {
            "scorer": judge, "top_k": 2, "model": {"proxy": {"base": {"none": {"model": base}}, "expert": urial,
                                                            "antiexpert": {"none": {"model": base}}}}}}}},
        "chunk-search: urial model, a template/raw pair": {"chunk-search": {
            "chunk": 3, "beams": 2, "candidates": 2, "model": urial, "tuned": {"template": {"model": aligned}},
            "untuned": {"none": {"model": str(d["llama"])}}}},
        "mix of three, one a urial side, under best-of-n": {"best-of-n": {"scorer": judge, "n": 2, "model": {"mix": {
            "weights": [0.6, 0.6, -0.2], "models": [{"template": {"model": aligned}}, urial,
                                                    {"none": {"model": str(d["llama"])}}]}}}},
    }


def _flagless(d) -> dict:
    """The composition the flags cannot say: DeRa between two URIAL-prompted sides, under best-of-N, with a
    corrector behind."""
    base, aligned = str(d["base"]), str(d["aligned"])
    return {"correct": {"corrector": aligned, "model": {"best-of-n": {
        "scorer": "geval:" + str(d["judge"]), "n": 2, "model": {"dera": {
            "lam": 0.7, "ref": {"urial": {"model": base, "k": 0}}, "aligned": {"urial": {"model": aligned, "k": 0}}}}}}}}


def test_every_registered_kind_is_covered(tiny_dir):
    covered = set()
    for tree in _compositions(tiny_dir).values():
        covered |= {next(iter(n)) for n in _nodes(tree)}
    assert set(NODES) <= covered, set(NODES) - covered


def _nodes(tree):
    if isinstance(tree, dict):
        yield tree
        for v in next(iter(tree.values())).values():
            for c in v if isinstance(v, list) else [v]:
                yield from _nodes(c)


@pytest.mark.parametrize("name", list(_compositions({"base": "b", "aligned": "a", "judge": "j", "llama": "l"})))
def test_conformance(name, tiny_dir):
    tree = _compositions(tiny_dir)[name]
    model = ak.load(tree)
    try:
        _conform(model, tree)
    finally:
        model.close()


def _conform(model, tree) -> None:
    # the provenance tree is the tree as written, and the walk reaches every model it names
    assert model.tree.to_dict() == parse(tree).to_dict()
    assert parse(json.loads(json.dumps(model.tree.to_dict()))).to_dict() == model.tree.to_dict()
    specs = {m.spec for m in backend_models(model) if hasattr(m, "generate")}
    assert specs == set(_specs(tree))
    assert all(path == "" or path.split(".")[-1] for path, _ in walk(model))
    # generate equals the concatenated stream, and a seeded prompt's output does not depend on its batchmates
    comps = model.generate(PROMPTS, CFG)
    assert len(comps) == len(PROMPTS) and all(isinstance(c.text, str) for c in comps)
    texts = {i: "" for i in range(len(PROMPTS))}
    finals = {}
    for ev in model.stream(PROMPTS, CFG):
        texts[ev.index] += ev.text
        if ev.completion is not None:
            finals[ev.index] = ev.completion.text
    assert [finals[i] for i in range(len(PROMPTS))] == [c.text for c in comps]
    assert [texts[i] for i in range(len(PROMPTS))] == [c.text for c in comps]
    alone = model.generate([PROMPTS[1]], CFG)[0]
    assert alone.text == comps[1].text
    # stop strings hold
    for c in model.generate(PROMPTS, GenerationConfig(max_new_tokens=8, stop=(" ",))):
        assert " " not in c.text.strip()
    # capabilities are truthful
    caps = model.capabilities
    assert isinstance(caps, Capabilities)
    if caps.chat_template:
        assert isinstance(model.generate([[Message("user", "Hi")]], GenerationConfig(max_new_tokens=3))[0].text, str)
    if caps.full_vocab_logits:
        try:
            scores = model.score(PROMPTS[:1], [" a b"])
        except ContextLengthError:  # scoring keeps room for a default-length answer: a URIAL preamble fills the
            return  # tiny model's 512 tokens (the message says so; real models have the room)
        assert len(scores) == 1 and len(scores[0].logprobs) >= 1


def _specs(tree):
    if isinstance(tree, str):
        yield tree
        return
    body = next(iter(tree.values()))
    for k, v in body.items():
        if k == "scorer":
            yield v.split(":", 1)[1]
        elif isinstance(v, (dict, str)) and k in ("model", "ref", "aligned", "rewriter", "corrector", "base", "expert",
                                                   "antiexpert", "tuned", "untuned"):
            yield from _specs(v)
        elif isinstance(v, list) and k == "models":
            for c in v:
                yield from _specs(c)


def test_the_flagless_composition_from_yaml_and_from_python_is_one_model(tiny_dir, tmp_path):
    """DeRa between two URIAL sides under best-of-N with a corrector behind: the YAML file and the Python nodes
    build the same tree and the same answers."""
    tree = _flagless(tiny_dir)
    path = tmp_path / "route.yaml"
    path.write_text(yaml.safe_dump(tree))
    base, aligned = str(tiny_dir["base"]), str(tiny_dir["aligned"])
    in_python = ak.node("correct", corrector=aligned, model=ak.node(
        "best-of-n", scorer="geval:" + str(tiny_dir["judge"]), n=2, model=ak.node(
            "dera", lam=0.7, ref=ak.node("urial", model=base, k=0), aligned=ak.node("urial", model=aligned, k=0))))
    assert load_tree(path) == in_python
    a, b = ak.load(str(path)), ak.load(in_python)
    out_a, out_b = a.generate(PROMPTS, CFG), b.generate(PROMPTS, CFG)
    assert [c.text for c in out_a] == [c.text for c in out_b]
    stages = [r["stage"] for r in out_a[0].meta["route"]]
    assert stages[-2:] == ["select", "correct"]
    select = out_a[0].meta["route"][-2]
    assert select["n"] == 2 and len(select["scores"]) == 2
    nodes = dict(ak.walk(a))
    assert nodes["model"].method == "best-of-n" and nodes["model.model"].method == "dera"
    assert nodes["model.model.aligned"].method == nodes["model.model.ref"].method == "urial"


def test_flags_build_the_tree_yaml_would(tiny_dir):
    base, aligned = str(tiny_dir["base"]), str(tiny_dir["aligned"])
    flags = tree_from_options(aligned, MethodOptions(method="dera", ref=base, lam=0.5, ref_method="none",
                                                     aligned_method="urial", k=1, corrector=base))
    assert flags.to_dict() == {"correct": {"corrector": base, "model": {"dera": {
        "lam": 0.5, "ref": {"none": {"model": base}}, "aligned": {"urial": {"k": 1, "model": aligned}}}}}}
    bon = tree_from_options(base, MethodOptions(method="best-of-n", scorer="reward:rm", n=3))
    assert bon.to_dict() == {"best-of-n": {"scorer": "reward:rm", "n": 3, "model": {"auto": {"model": base}}}}


@pytest.mark.parametrize("bad, message", [
    ({"urial": {"model": "m", "kk": 3}}, "node 'urial': unknown key(s) kk; its options: template, k, select"),
    ({"urial": {"k": 3}}, "node 'urial' needs 'model'"),
    ({"dera": {"ref": "a", "aligned": "b"}}, "node 'dera' needs lam"),
    ({"dera": {"ref": "a", "aligned": "b", "lam": -1}}, "lam"),
    ({"urial": {"model": "m", "select": "nearest"}}, "select"),
    ({"sharpen": {"model": "m"}}, "unknown node kind 'sharpen'"),
    ({"urial": {"model": "m"}, "none": {"model": "m"}}, "a node is a mapping with one key"),
    ({"best-of-n": {"model": "m", "n": 0, "scorer": "reward:x"}}, "'n'"),
    ({"correct": {"model": "m", "corrector": ""}}, "empty model spec"),
    ([1, 2], "a node is a mapping with one key"),
])
def test_bad_trees_are_one_clear_line(bad, message):
    with pytest.raises(InputError) as e:
        parse(bad)
    assert message in str(e.value)


def test_a_bad_route_file_names_itself(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("urial: {model: [unclosed")
    with pytest.raises(InputError, match="r.yaml"):
        load_tree(p)
    with pytest.raises(InputError, match="does not exist"):
        load_tree(tmp_path / "nope.yaml")


def test_errors_while_building_name_the_stage(tiny_dir):
    with pytest.raises(AlignkitError, match=r"route stage 'aligner' \(corrector ./no-such-model\)"):
        ak.load({"correct": {"corrector": "./no-such-model", "model": {"none": {"model": str(tiny_dir["base"])}}}})
    with pytest.raises(AlignkitError, match="route stage 'best-of-n'"):
        ak.load({"best-of-n": {"scorer": "reward:./no-rm", "model": {"none": {"model": str(tiny_dir["base"])}}}})


def test_a_node_is_a_frozen_value():
    n = ak.node("urial", model="m", k=0)
    assert isinstance(n, Node) and n == parse({"urial": {"model": "m", "k": 0}})
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        n.kind = "none"  # type: ignore[misc]


def test_route_files_on_the_command_line(tiny_dir, tmp_path, capsys):
    """``--route FILE`` on generate, chat, shift and serve runs the tree in the file; the flags it replaces are
    refused beside it; the records are those of the same tree given as flags."""
    from alignkit.cli.main import main
    from alignkit.cli.serve import parse_route

    base, aligned = str(tiny_dir["base"]), str(tiny_dir["aligned"])
    route = tmp_path / "route.yaml"
    route.write_text(yaml.safe_dump({"correct": {"corrector": aligned, "model": {"template": {"model": aligned}}}}))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    common = ["--input", str(inp), "--max-new-tokens", "5", "--quiet"]
    assert main(["generate", "--route", str(route), "--output", str(tmp_path / "a.jsonl"), *common]) == 0
    assert main(["generate", "--model", aligned, "--method", "template", "--corrector", aligned,
                 "--output", str(tmp_path / "b.jsonl"), *common]) == 0
    a = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k != "provenance"}  # noqa: E731
    assert [strip(r) for r in a] == [strip(r) for r in b] and a[0]["route"][-1]["stage"] == "correct"
    assert a[0]["provenance"]["tree"] == b[0]["provenance"]["tree"]
    capsys.readouterr()
    assert main(["generate", "--route", str(route), "--method", "urial", "--output", str(tmp_path / "c.jsonl"),
                 *common]) == 2
    assert "drop --method" in capsys.readouterr().err
    assert main(["chat", "--route", str(route), "--message", "Hi", "--max-new-tokens", "3"]) == 0
    shift_in = tmp_path / "s.jsonl"
    shift_in.write_text(json.dumps({"id": "x", "instruction": "Name a colour."}) + "\n")
    assert main(["shift", "--base", base, "--route", str(route), "--input", str(shift_in), "--output",
                 str(tmp_path / "shift.jsonl"), "--max-new-tokens", "4", "--quiet", "--json"]) == 0
    rec = json.loads((tmp_path / "shift.jsonl").read_text().splitlines()[0])
    assert rec["aligned"].endswith(str(route)) and rec["positions"]
    name, model, tree = parse_route(f"fixed={route}")
    assert name == "fixed" and model is None and tree == load_tree(route)
