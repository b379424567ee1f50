"""The public Python API end to end, as a notebook would use it, on tiny models (and once on the embedded Gemma):
load under each method, chat, generate (in memory and resumable into a file), shift -> a DataFrame and the CLI's
summary, evaluate two contestants judge-free -> a table."""

from __future__ import annotations

import json

import pytest

import alignkit as ak
from alignkit.analysis.result import POSITION_COLUMNS
from alignkit.errors import InputError

QUESTIONS = ["Name a colour.", "Tell me a fact", "The quick brown"]


@pytest.fixture(scope="module")
def short_template(tmp_path_factory):
    p = tmp_path_factory.mktemp("tpl") / "t.yaml"
    p.write_text("id: short\npreamble: Be kind.\nexamples:\n  - query: Hi\n    answer: Hello!\n")
    return str(p)


def test_load_under_each_method_and_chat(tiny_dir, short_template):
    base, aligned = str(tiny_dir["base"]), str(tiny_dir["aligned"])
    res = ak.resources()
    models = {
        "urial": ak.load(base, method="urial", template=short_template, resources=res),
        "template": ak.load(aligned, method="template", resources=res),
        "none": ak.load(base, method="none", resources=res),
        "auto": ak.load(aligned, method="auto", resources=res),
        "bare": ak.load(base, resources=res),
    }
    for name, m in models.items():
        assert isinstance(m, ak.LanguageModel), name
        text = ak.chat(m, "Name a colour.", max_new_tokens=5) if name != "bare" else m.generate(
            ["Name a colour."], ak.GenerationConfig(max_new_tokens=5))[0].text
        assert isinstance(text, str)
    assert models["urial"].tree.to_dict() == {"urial": {"template": short_template, "model": base}}
    with pytest.raises(InputError, match="need method"):
        ak.load(base, k=3)
    with pytest.raises(InputError, match="one model slot"):
        ak.load(base, method="dera", lam=0.5)
    with pytest.raises(InputError, match="unknown node kind"):
        ak.load({"sharpen": {"model": base}})


def test_generate_in_memory_and_into_a_resumable_file(tiny_dir, tmp_path):
    model = ak.load(str(tiny_dir["aligned"]), method="template")
    rows = ak.generate(model, QUESTIONS, max_new_tokens=5, temperature=0.7, seed=3)
    assert [r["prompt"] for r in rows] == QUESTIONS and all("output" in r and "usage" in r for r in rows)
    assert rows[0]["provenance"]["tree"] == {"template": {"model": str(tiny_dir["aligned"])}}
    out = tmp_path / "out.jsonl"
    first = ak.generate(model, QUESTIONS[:2], output=out, max_new_tokens=5, temperature=0.7, seed=3)
    again = ak.generate(model, QUESTIONS, output=out, resume=True, max_new_tokens=5, temperature=0.7, seed=3)
    assert len(out.read_text().splitlines()) == 3 and len(again) == 3
    # a record's seed is its place in the input: the same text however the run was split
    assert [r["output"] for r in again] == [r["output"] for r in rows] and first[0]["output"] == rows[0]["output"]
    with pytest.raises(InputError, match="already has records"):
        ak.generate(model, QUESTIONS, output=out, max_new_tokens=5)
    with pytest.raises(InputError, match="unknown decoding option"):
        ak.generate(model, QUESTIONS, max_tokens=5)


def test_the_same_records_as_the_command_line(tiny_dir, tmp_path):
    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    cli_out, api_out = tmp_path / "cli.jsonl", tmp_path / "api.jsonl"
    assert main(["generate", "--model", str(tiny_dir["aligned"]), "--method", "template", "--input", str(inp),
                 "--output", str(cli_out), "--max-new-tokens", "6", "--temperature", "0.8", "--seed", "5",
                 "--quiet"]) == 0
    ak.generate(ak.load(str(tiny_dir["aligned"]), method="template"), str(inp), output=api_out, max_new_tokens=6,
                temperature=0.8, seed=5)
    strip = lambda r: {k: v for k, v in r.items() if k != "provenance"}  # noqa: E731
    cli = [json.loads(x) for x in cli_out.read_text().splitlines()]
    api = [json.loads(x) for x in api_out.read_text().splitlines()]
    assert [strip(r) for r in cli] == [strip(r) for r in api]
    assert cli[0]["provenance"]["tree"] == api[0]["provenance"]["tree"]


def test_shift_gives_a_dataframe_and_the_clis_summary(tiny_dir, tmp_path, capsys):
    from alignkit.cli.main import main

    base, aligned = str(tiny_dir["base"]), str(tiny_dir["aligned"])
    result = ak.shift(base, ak.load(aligned, method="template"), prompts=QUESTIONS, ids=["a", "b", "c"],
                      max_new_tokens=8, batch_size=2)
    df = result.positions()
    assert list(df.columns) == list(POSITION_COLUMNS) and len(df) == sum(len(r["positions"]) for r in result.records)
    assert set(df["category"]) <= {"unshifted", "marginal", "shifted"}
    assert set(df["token_class"]) <= {"markup", "function", "content"}
    assert (df["base_rank"] >= 0).all() and df["kl"].notna().all()
    (label, s), = result.summary.items()
    assert label == f"template:{aligned}"
    assert s["unshifted"] + s["marginal"] + s["shifted"] == pytest.approx(1)
    assert set(result.tokens().columns) == {"aligned", "token", "count"}
    html = result.to_html(tmp_path / "r" / "shift.html")
    assert html.is_file() and "<html" in result._repr_html_().lower()
    # the command line on the same input prints the same summary
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "instruction": q}) + "\n" for i, q in zip("abc", QUESTIONS)))
    capsys.readouterr()
    assert main(["shift", "--base", base, "--aligned", aligned, "--aligned-method", "template", "--input", str(inp),
                 "--output", str(tmp_path / "s.jsonl"), "--json", "--max-new-tokens", "8", "--batch-size", "2",
                 "--quiet"]) == 0
    cli = json.loads(capsys.readouterr().out)[label]
    assert cli == json.loads(json.dumps({k: v for k, v in s.items() if k != "curves"}))
    # answers given instead of generated; a model compared with itself, seeing the same text, diverges nowhere
    same = ak.shift(base, base, prompts=QUESTIONS, answers=[" red", " the sea is wet", " fox"], context="raw")
    positions = same.positions()
    assert len(positions) >= 3 and positions["kl"].abs().max() < 1e-6
    assert (positions["base_rank"] == positions["aligned_rank"]).all()
    with pytest.raises(InputError, match="3 prompts but 1 answers"):
        ak.shift(base, base, prompts=QUESTIONS, answers=["x"])
    with pytest.raises(InputError, match="unknown key"):
        ak.shift(base, base, prompts=QUESTIONS, colour="red")


def test_evaluate_two_contestants_judge_free(tiny_dir, short_template, tmp_path):
    base = str(tiny_dir["base"])
    inst = tmp_path / "inst.jsonl"
    inst.write_text("".join(json.dumps({"id": f"i{k}", "instruction": q, "type": "t", "topic": "x", "safety": False})
                            + "\n" for k, q in enumerate(QUESTIONS)))
    report = ak.evaluate({"urial": ak.load(base, method="urial", template=short_template),
                          "raw": {"none": {"model": base}}},
                         instructions=str(inst), output=tmp_path / "eval", max_new_tokens=5)
    table = report.table()
    assert set(table.index) == {"urial", "raw"}
    assert len(report.records["urial"]) == 3 and (tmp_path / "eval" / "report.html").is_file()
    prov = json.loads((tmp_path / "eval" / "report.json").read_text())["provenance"]["contestants"]
    assert {c["name"]: c["route"] for c in prov}["raw"] == {"none": {"model": base}}
    with pytest.raises(InputError, match="at least one contestant"):
        ak.evaluate({})


def test_the_public_api_on_the_embedded_gemma(gemma, tmp_path):
    """Once for real: the embedded base aligned in context answers, and ak.shift measures it against itself raw."""
    res = ak.resources()
    res.models.models["gemma-3-270m"] = gemma  # the session's copy, not a second load
    chat = ak.load("gemma-3-270m", method="urial", resources=res)
    answer = ak.chat(chat, "What is the capital of France?", max_new_tokens=24)
    assert "Paris" in answer
    result = ak.shift(gemma, chat, prompts=["What is the capital of France?"], answers=[answer], context="urial",
                      resources=res)
    df = result.positions()
    assert len(df) >= 2 and (df["category"] == "unshifted").mean() > 0.5
    assert set(df["aligned"]) == {"urial:gemma-3-270m"}


def test_dera_sweep_from_python_matches_the_command_line(tiny_dir, tmp_path, capsys):
    from alignkit.cli.main import main

    base, aligned = str(tiny_dir["base"]), str(tiny_dir["aligned"])
    sweep = ak.dera_sweep(base, aligned, QUESTIONS, lams=[0, 0.5, 1], output=tmp_path / "py", aligned_method="template",
                          max_new_tokens=5)
    table = sweep.table()
    assert list(table.index) == [0.0, 0.5, 1.0] and (table["answers"] == 3).all()
    assert table.loc[0.0, "all_kl_per_token"] == pytest.approx(0.0, abs=1e-9)  # lambda 0 is the reference itself
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    assert main(["dera", "sweep", "--ref", base, "--aligned", aligned, "--aligned-method", "template", "--lams",
                 "0,0.5,1", "--input", str(inp), "--output", str(tmp_path / "cli"), "--max-new-tokens", "5",
                 "--quiet"]) == 0
    for lam in ("0", "0.5", "1"):
        py = [json.loads(x)["output"] for x in (tmp_path / "py" / f"lam-{lam}.jsonl").read_text().splitlines()]
        cli = [json.loads(x)["output"] for x in (tmp_path / "cli" / f"lam-{lam}.jsonl").read_text().splitlines()]
        assert py == cli
    # sides given as route trees are used as they are: an in-context-aligned side the flags would also allow
    tree_sweep = ak.dera_sweep({"none": {"model": base}}, {"template": {"model": aligned}}, QUESTIONS, lams="1",
                               output=tmp_path / "tree", max_new_tokens=5)
    assert tree_sweep.summary["aligned_method"] == "as given"
    one = [json.loads(x)["output"] for x in (tmp_path / "tree" / "lam-1.jsonl").read_text().splitlines()]
    assert one == [json.loads(x)["output"] for x in (tmp_path / "cli" / "lam-1.jsonl").read_text().splitlines()]
    with pytest.raises(InputError, match="dera_sweep options"):
        ak.dera_sweep(base, aligned, QUESTIONS, output=tmp_path / "x", colour="red")


def test_the_data_tools_from_python(tiny_dir, tmp_path):
    """Teacher answers, route-vs-route pairs and AI-feedback pairs from Python, as `alignkit data` makes them; the
    answers equal the command line's; what they write loads back as valid data."""
    from alignkit.cli.main import main

    base = str(tiny_dir["base"])
    prompts = [{"id": f"p{i}", "prompt": q, "category": "x"} for i, q in enumerate(QUESTIONS)]
    counts = ak.data_answers(ak.load(base, method="none"), prompts, tmp_path / "sft.jsonl", max_new_tokens=6,
                             keep_truncated=True)
    assert counts["written"] == 3
    sft = ak.data_load(str(tmp_path / "sft.jsonl"), "sft")
    assert [r["id"] for r in sft] == ["p0", "p1", "p2"] and sft[0]["category"] == "x"
    assert ak.data_answers(ak.load(base, method="none"), prompts, tmp_path / "sft.jsonl", max_new_tokens=6,
                           keep_truncated=True)["written"] == 0  # resumed: nothing new
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    assert main(["data", "answers", "--input", str(inp), "--output", str(tmp_path / "cli.jsonl"), "--model", base,
                 "--method", "none", "--max-new-tokens", "6", "--keep-truncated", "--quiet"]) == 0
    cli = ak.data_load(str(tmp_path / "cli.jsonl"), "sft")
    assert [r["messages"] for r in cli] == [r["messages"] for r in sft]
    pairs = ak.data_pairs(ak.load(base, method="none"), {"none": {"model": str(tiny_dir["llama"])}}, prompts,
                          tmp_path / "pairs.jsonl", max_new_tokens=6, keep_truncated=True)
    assert pairs["written"] == 3 and len(ak.data_load(str(tmp_path / "pairs.jsonl"), "prefs")) == 3
    ranked = ak.data_ranked_pairs(ak.load(base, method="none"), prompts, tmp_path / "ranked.jsonl",
                                  scorer=f"geval:{tiny_dir['judge']}", k=3, max_new_tokens=6, temperature=0.9)
    assert ranked["written"] + ranked["dropped"] == 3
    assert ak.data_load("alignkit-sft", "sft")  # the shipped set by name
    with pytest.raises(InputError, match="bad record"):
        ak.data_load(str(inp), "sft")  # prompts are not SFT conversations


def test_a_sweep_side_can_be_a_route_file(tiny_dir, tmp_path):
    from alignkit.cli.main import main

    base, aligned = str(tiny_dir["base"]), str(tiny_dir["aligned"])
    side = tmp_path / "side.yaml"
    side.write_text(f"template: {{model: {aligned}}}\n")
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    common = ["--lams", "1", "--input", str(inp), "--max-new-tokens", "5", "--quiet", "--no-kl"]
    assert main(["dera", "sweep", "--ref", base, "--aligned", str(side), "--output", str(tmp_path / "f"), *common]) == 0
    assert main(["dera", "sweep", "--ref", base, "--aligned", aligned, "--aligned-method", "template",
                 "--output", str(tmp_path / "s"), *common]) == 0
    outs = [[json.loads(x)["output"] for x in (tmp_path / d / "lam-1.jsonl").read_text().splitlines()] for d in "fs"]
    assert outs[0] == outs[1]
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["aligned_method"] == "as given"
