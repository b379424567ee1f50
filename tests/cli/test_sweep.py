"""``alignkit sweep`` / ``ak.weight_sweep``: one weight of any weighted route at several values, on tiny real models --
proxy-tuning's alpha 0 is the base, alpha 1 with base = anti-expert is the expert, the KL to the reference equals a
direct computation from the sides' own distributions; it resumes, names the weights, and says when a KL cannot be
measured (ARGS)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import alignkit as ak
from alignkit.cli.main import main
from alignkit.types import GenerationConfig

PROMPTS = ["The quick brown", "Tell me a fact", "Name a colour."]


def _proxy(d, anti="llama"):
    return {"proxy": {"base": {"none": {"model": str(d["base"])}}, "expert": {"template": {"model": str(d["aligned"])}},
                      "antiexpert": {"none": {"model": str(d[anti])}}}}


@pytest.fixture()
def inp(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    return path


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_proxy_alpha_sweep_from_the_command_line(tiny_dir, inp, tmp_path, capsys):
    route = tmp_path / "proxy.yaml"
    route.write_text(yaml.safe_dump(_proxy(tiny_dir, anti="base")))  # base = anti-expert
    out = tmp_path / "sweep"
    args = ["sweep", "--route", str(route), "--values", "0,1,1.5", "--input", str(inp), "--output", str(out),
            "--max-new-tokens", "6", "--quiet"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "proxy sweep of alpha" in table and "KL/token" in table
    cfg = GenerationConfig(max_new_tokens=6)
    base = ak.load(str(tiny_dir["base"]), method="none").generate(PROMPTS, cfg)
    expert = ak.load(str(tiny_dir["aligned"]), method="template").generate(PROMPTS, cfg)
    a0, a1 = _rows(out / "alpha-0.jsonl"), _rows(out / "alpha-1.jsonl")
    assert [r["token_ids"] for r in a0] == [list(c.token_ids) for c in base]  # alpha 0: the base model
    assert [r["token_ids"] for r in a1] == [list(c.token_ids) for c in expert]  # base + (expert - base): the expert
    assert all(r["alpha"] == 1.0 and r["provenance"] for r in a1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["knob"] == "alpha" and summary["reference"] == {"alpha": 0.0} and set(summary["values"]) == {"0", "1", "1.5"}
    assert summary["values"]["0"]["all"]["kl_per_token"] == 0.0
    assert summary["values"]["1"]["all"]["kl_per_token"] > 0
    assert (out / "sweep.png").stat().st_size > 0
    # resumable: a second run writes nothing new
    before = {p.name: p.read_text() for p in out.glob("alpha-*.jsonl")}
    assert main(args) == 0
    assert {p.name: p.read_text() for p in out.glob("alpha-*.jsonl")} == before


def test_the_kl_is_the_exact_kl_between_the_mixes_computed_from_the_sides(tiny_dir, tmp_path):
    res = ak.weight_sweep(_proxy(tiny_dir), PROMPTS, output=tmp_path / "s", values=[2.0], reference=0.5, max_new_tokens=5)
    assert list(res.table().index) == [2.0] and res.table().index.name == "alpha"
    rows = _rows(tmp_path / "s" / "alpha-2.jsonl")
    sides = [ak.load(str(tiny_dir["base"]), method="none"), ak.load(str(tiny_dir["aligned"]), method="template"),
             ak.load(str(tiny_dir["llama"]), method="none")]
    total, n = 0.0, 0
    for r in rows:
        lps = [torch.cat([c.logprobs for c in m.iter_logprobs([r["prompt"]], [r["token_ids"]])]).double()
               for m in sides]
        p = torch.log_softmax(lps[0] + 2.0 * (lps[1] - lps[2]), -1)
        q = torch.log_softmax(lps[0] + 0.5 * (lps[1] - lps[2]), -1)
        total += float((p.exp() * (p - q)).sum())
        n += len(r["token_ids"])
    got = res.summary["values"]["2"]["all"]["kl_per_token"]
    assert got == pytest.approx(total / n, rel=1e-4, abs=1e-6)


def test_weights_are_named_and_bad_sweeps_are_clear_errors(tiny_dir, inp, tmp_path, capsys):
    eft = {"eft": {"base": {"none": {"model": str(tiny_dir["base"])}}, "tuned": {"template": {"model": str(tiny_dir["aligned"])}},
                   "untuned": {"none": {"model": str(tiny_dir["llama"])}}}}
    cases = [(eft, "0,1", None, "several weights (alpha, beta): name one"),
             (eft, "0,1", "gamma", "no weight 'gamma'; its weights are alpha, beta"),
             ({"none": {"model": str(tiny_dir["base"])}}, "0,1", None, "which has none"),
             (_proxy(tiny_dir), "0,x", None, "--values must be comma-separated numbers"),
             (_proxy(tiny_dir), "0,inf", None, "finite")]
    for k, (tree, values, knob, needle) in enumerate(cases):
        route = tmp_path / f"r{k}.yaml"
        route.write_text(yaml.safe_dump(tree))
        argv = ["sweep", "--route", str(route), "--values", values, "--input", str(inp), "--output",
                str(tmp_path / f"o{k}"), "--max-new-tokens", "3", "--quiet"] + (["--knob", knob] if knob else [])
        assert main(argv) != 0
        assert needle in capsys.readouterr().err
    # EFT's beta by name
    res = ak.weight_sweep(eft, PROMPTS[:1], output=tmp_path / "beta", values="1,0.5", knob="beta", reference=1.0,
                   max_new_tokens=3)
    assert res.summary["values"]["1"]["all"]["kl_per_token"] == 0.0 and res.summary["weights"] == {"alpha": 1.0, "beta": 1.0}


def test_an_args_weight_sweep_rates_answers_and_says_why_there_is_no_kl(tiny_dir, hub_reward, tmp_path):
    reward = f"reward:{hub_reward['rm']}"
    tree = {"args": {"scorer": reward, "top_k": 3, "model": {"none": {"model": str(tiny_dir["base"])}}}}
    res = ak.weight_sweep(tree, PROMPTS[:2], output=tmp_path / "a", values="0,2", max_new_tokens=3, scorer=reward,
                          validation_share=1.0)
    s = res.summary
    assert s["knob"] == "weight" and "not measured" in s["kl_note"]
    assert all(v["all"]["kl_per_token"] is None and v["all"]["rated"] == 2 for v in s["values"].values())
    assert s["recommendation"]["weight"] in (0.0, 2.0)
    plain = ak.load(str(tiny_dir["base"]), method="none").generate(PROMPTS[:2], GenerationConfig(max_new_tokens=3))
    assert [r["token_ids"] for r in _rows(tmp_path / "a" / "weight-0.jsonl")] == [list(c.token_ids) for c in plain]
