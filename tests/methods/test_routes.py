"""Route stages on tiny models: a BPO rewriter and an Aligner corrector trained in seconds to do a known
transformation (a "parrot"), composed with the model under a method -- in Python, generate, chat, the server
(streaming and not) and eval; every stage's record; errors that name the stage and lose no record."""

from __future__ import annotations

import json

import pytest

from alignkit import GenerationConfig, Message, load_model
from alignkit.cli.main import main
from alignkit.errors import InputError, ModelSpecError
from alignkit.methods import MethodOptions, apply_method
from alignkit.methods.routes import AnswerCorrector, PromptRewriter, load_layout, usage

REWRITE = 'id: t-rewrite\nstage: rewrite\nmethod: none\ntemplate: "Improve: {prompt}\\nBetter:"\ndecoding: {max_new_tokens: 60, stop: ["\\n"]}\n'
CORRECT = 'id: t-correct\nstage: correct\nmethod: none\ntemplate: "Q: {question} A:{answer}\\nFixed:"\n'
QUESTION, BETTER, ANSWER, FIXED = "Tell me a fact", " Tell me one true fact about the sea", " GOOD", " FIXED IT"
STOP = GenerationConfig(max_new_tokens=10, stop=("\n",))


@pytest.fixture(scope="module")
def parrot(tiny_dir, tmp_path_factory):
    """One tiny model that has memorised: the rewrite of QUESTION, the answer to the rewritten request, and
    the correction of that answer. It knows nothing else, so each stage's effect is visible."""
    from tests.support.parrot import train_parrot

    root = tmp_path_factory.mktemp("routes")
    (root / "rewrite.yaml").write_text(REWRITE)
    (root / "correct.yaml").write_text(CORRECT)
    rw, co = load_layout(str(root / "rewrite.yaml"), "rewrite"), load_layout(str(root / "correct.yaml"), "correct")
    pairs = [(rw.request(prompt=QUESTION), BETTER + "\n"), (BETTER.strip(), ANSWER + "\n"),
             (co.request(question=QUESTION, answer=ANSWER), FIXED + "\n")]
    path = train_parrot(tiny_dir["base"], root / "parrot", pairs)
    return {"spec": str(path), "rewrite": str(root / "rewrite.yaml"), "correct": str(root / "correct.yaml"),
            "model": load_model(str(path), dtype="float32")}


def _options(parrot, **kw) -> MethodOptions:
    return MethodOptions(method="none", rewriter_layout=parrot["rewrite"], corrector_layout=parrot["correct"], **kw)


def _loader(parrot):
    return lambda spec: parrot["model"] if spec == parrot["spec"] else load_model(spec)


def test_the_parrot_knows_only_its_texts(parrot):
    raw = apply_method(parrot["model"], MethodOptions(method="none"))
    assert raw.generate([QUESTION], STOP)[0].text != ANSWER  # asked directly, it does not give the answer


def test_rewriter_output_reaches_the_model(parrot):
    route = apply_method(parrot["model"], _options(parrot, rewriter=parrot["spec"]), _loader(parrot))
    assert isinstance(route, PromptRewriter)
    comp = route.generate([QUESTION], STOP)[0]
    assert comp.text == ANSWER
    rec = comp.meta["route"]
    assert [r["stage"] for r in rec] == ["rewrite", "answer"]
    assert rec[0]["input"] == QUESTION and rec[0]["output"] == BETTER.strip() and rec[0]["model"] == parrot["spec"]
    assert rec[1]["input"] == BETTER.strip() and rec[1]["output"] == ANSWER
    total = usage(comp)
    assert total["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in rec) > comp.completion_tokens


def test_corrector_replaces_the_upstream_answer_and_three_stages_compose(parrot):
    route = apply_method(parrot["model"], _options(parrot, rewriter=parrot["spec"], corrector=parrot["spec"]),
                         _loader(parrot))
    assert isinstance(route, AnswerCorrector) and isinstance(route.upstream, PromptRewriter)
    comp = route.generate([QUESTION], STOP)[0]
    assert comp.text == FIXED.strip()
    stages = comp.meta["route"]
    assert [r["stage"] for r in stages] == ["rewrite", "answer", "correct"]
    assert stages[1]["output"] == ANSWER and stages[2]["input"] == {"question": QUESTION, "answer": ANSWER}
    assert usage(comp)["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in stages)
    info = route.info()
    assert info["method"] == "bpo > none > aligner" and len(info["route"]) == 3
    # a batch: each prompt keeps its own stage records
    comps = route.generate([QUESTION, "Something else entirely"], STOP)
    assert comps[0].text == FIXED.strip() and comps[1].meta["route"][0]["input"] == "Something else entirely"


def test_streaming_streams_the_last_stage(parrot):
    route = apply_method(parrot["model"], _options(parrot, rewriter=parrot["spec"], corrector=parrot["spec"]),
                         _loader(parrot))
    events = list(route.stream([QUESTION], STOP))
    assert "".join(e.text for e in events) == events[-1].completion.text == FIXED.strip()
    assert [r["stage"] for r in events[-1].completion.meta["route"]] == ["rewrite", "answer", "correct"]


def test_a_runaway_rewrite_keeps_the_original_request(parrot, tmp_path):
    short = tmp_path / "short.yaml"  # the same layout with too few tokens for the rewrite
    short.write_text(REWRITE.replace("max_new_tokens: 60", "max_new_tokens: 3"))
    route = apply_method(parrot["model"], MethodOptions(method="none", rewriter=parrot["spec"],
                                                        rewriter_layout=str(short)), _loader(parrot))
    comp = route.generate([QUESTION], STOP)[0]
    first = comp.meta["route"][0]
    assert "runaway" in first["fallback"] and comp.meta["route"][1]["input"] == QUESTION


def test_chat_messages_rewrite_the_last_user_turn(parrot):
    route = apply_method(parrot["model"], _options(parrot, rewriter=parrot["spec"]), _loader(parrot))
    prepared = route.prepare_batch([[Message("system", "Be brief."), Message("user", QUESTION)]], [STOP])[0]
    assert [m.content for m in prepared.prompt] == ["Be brief.", BETTER.strip()]


def test_empty_correction_keeps_the_upstream_answer_and_says_so(parrot, tmp_path):
    layout = tmp_path / "empty.yaml"  # the parrot answers this request with a newline: an empty correction
    layout.write_text('id: e\nstage: correct\nmethod: none\ntemplate: "Improve: {question}{answer}\\nBetter:"\n')
    route = apply_method(parrot["model"], MethodOptions(method="none", corrector=parrot["spec"],
                                                        corrector_layout=str(layout)), _loader(parrot))
    upstream = apply_method(parrot["model"], MethodOptions(method="none")).generate([QUESTION], STOP)[0].text
    comp = route.generate([QUESTION], GenerationConfig(max_new_tokens=10, stop=("Better",)))[0]
    last = comp.meta["route"][-1]
    if last.get("fallback"):
        assert comp.text == upstream and "empty correction" in last["fallback"]
    else:  # the parrot wrote something: it is the answer
        assert comp.text == last["output"]


def test_layouts_are_checked(tmp_path):
    assert load_layout("bpo-thudm", "rewrite").method == "none"
    assert "Question-Answer pair" in load_layout("aligner-pku", "correct").template
    with pytest.raises(InputError, match="for the 'rewrite' stage"):
        load_layout("bpo-thudm", "correct")
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: b\nstage: correct\nmethod: none\ntemplate: 'only {question}'\n")
    with pytest.raises(InputError, match="missing: {answer}"):
        load_layout(str(bad), "correct")
    with pytest.raises(InputError, match="no layout"):
        load_layout("nope", "rewrite")


def test_published_checkpoints_get_their_layout():
    from alignkit.methods.routes import layout_for

    class Hub:  # what a model loaded from the hub id looks like to layout selection
        trained_format = None

        def __init__(self, spec):
            self.spec = spec

    assert layout_for(Hub("hf:THUDM/BPO"), "rewrite", None).id == "bpo-thudm"
    assert layout_for(Hub("aligner/aligner-7b-v1.0"), "correct", None).id == "aligner-pku"
    assert layout_for(Hub("./my-rewriter"), "rewrite", None).id == "alignkit-bpo"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _route_flags(parrot):
    return ["--model", parrot["spec"], "--method", "none", "--rewriter", parrot["spec"], "--rewriter-layout",
            parrot["rewrite"], "--corrector", parrot["spec"], "--corrector-layout", parrot["correct"],
            "--max-new-tokens", "10", "--stop", "\\n"]


def test_generate_writes_every_stage(parrot, tmp_path):
    inp = _write(tmp_path / "in.jsonl", [{"id": "a", "prompt": QUESTION}, {"id": "b", "prompt": "Other"}])
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--input", str(inp), "--output", str(out), *_route_flags(parrot), "--quiet"]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert recs[0]["output"] == FIXED.strip()
    assert [s["stage"] for s in recs[0]["route"]] == ["rewrite", "answer", "correct"]
    assert recs[0]["usage"]["completion_tokens"] == sum(s["usage"]["completion_tokens"] for s in recs[0]["route"])
    assert [s["stage"] for s in recs[0]["provenance"]["model"]["route"]] == ["rewrite", "answer", "correct"]


def test_show_prompt_shows_every_stage(parrot, tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", [{"id": "a", "prompt": QUESTION}])
    assert main(["generate", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), *_route_flags(parrot),
                 "--show-prompt"]) == 0
    out = capsys.readouterr().out
    assert out.index("Improve: " + QUESTION) < out.index(BETTER.strip()) < out.index("Fixed:")


def test_chat_one_shot(parrot, capsys):
    assert main(["chat", "--message", QUESTION, *_route_flags(parrot)]) == 0
    assert capsys.readouterr().out.strip() == FIXED.strip()


def test_a_failing_stage_is_one_line_and_loses_no_record(parrot, tmp_path, capsys):
    # a rewriter that cannot be loaded
    inp = _write(tmp_path / "in.jsonl", [{"id": "a", "prompt": QUESTION}])
    flags = _route_flags(parrot)
    flags[flags.index("--rewriter") + 1] = "./no-such-rewriter"
    assert main(["generate", "--input", str(inp), "--output", str(tmp_path / "x.jsonl"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "route stage 'bpo' (rewriter ./no-such-rewriter)" in err
    # a rewriter that fails while running: the second request is longer than its context
    inp = _write(tmp_path / "in2.jsonl", [{"id": "a", "prompt": QUESTION}, {"id": "b", "prompt": "word " * 600}])
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--input", str(inp), "--output", str(out), *_route_flags(parrot), "--batch-size", "1",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "route stage 'bpo'" in err and "context" in err
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a"]  # the finished record stays


def test_bad_layout_flag_is_a_clean_error(parrot, tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", [{"id": "a", "prompt": QUESTION}])
    assert main(["generate", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--model", parrot["spec"],
                 "--rewriter", parrot["spec"], "--rewriter-layout", "aligner-pku"]) == 2
    assert "for the 'correct' stage" in capsys.readouterr().err


def test_server_serves_the_route(parrot):
    import openai

    from alignkit.server.app import build_app
    from alignkit.server.service import Service
    from tests.support.openai_server import ServerThread

    route = apply_method(parrot["model"], _options(parrot, rewriter=parrot["spec"], corrector=parrot["spec"]),
                         _loader(parrot))
    with ServerThread(build_app(Service(route, "route"))) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
        r = client.completions.create(model="route", prompt=QUESTION, max_tokens=10, stop=["\n"], temperature=0)
        assert r.choices[0].text == FIXED.strip()
        assert r.usage.completion_tokens > len(FIXED.split())  # every stage's tokens are counted
        pieces = [c.choices[0].text for c in client.completions.create(model="route", prompt=QUESTION, max_tokens=10,
                                                                        stop=["\n"], stream=True, temperature=0) if c.choices]
        assert "".join(pieces) == FIXED.strip()


def test_eval_contestant_with_route(parrot, tmp_path, tiny_dir):
    from alignkit.evaluation.harness import EvalConfig, Harness
    from tests.support.scripted import ScriptedJudge

    inst = _write(tmp_path / "inst.jsonl", [{"id": "q", "instruction": QUESTION, "category": "writing"}])
    judge = ScriptedJudge()
    loader = {"scripted": judge}

    def load(spec):
        return loader.get(spec) or (parrot["model"] if spec == parrot["spec"] else load_model(spec))

    cfg = EvalConfig.from_dict({
        "instructions": str(inst), "judge": "scripted", "max_new_tokens": 10, "output": str(tmp_path / "ev"),
        "contestants": [{"name": "route", "model": parrot["spec"], "method": "none", "rewriter": parrot["spec"],
                         "rewriter_layout": parrot["rewrite"], "corrector": parrot["spec"],
                         "corrector_layout": parrot["correct"], "stop": ["\n"]}]})
    Harness(cfg, load, progress=lambda m: None).run()
    rec = json.loads((tmp_path / "ev" / "answers" / "route.jsonl").read_text().splitlines()[0])
    assert rec["answer"] == FIXED.strip() and [s["stage"] for s in rec["route"]] == ["rewrite", "answer", "correct"]


def test_unknown_rewriter_spec_is_a_spec_error(parrot):
    with pytest.raises(ModelSpecError):
        apply_method(parrot["model"], MethodOptions(method="none", rewriter="./nowhere"), load_model)


def test_shift_analysis_of_a_route(parrot, tmp_path, capsys):
    """The aligned model is the whole route; its distribution at each answer position is the corrector's given
    the upstream answer it corrected, so every answer token is the route's own greedy choice."""
    inp = _write(tmp_path / "in.jsonl", [{"id": "a", "instruction": QUESTION}])
    assert main(["shift", "--base", parrot["spec"], "--aligned", parrot["spec"], "--aligned-method", "none",
                 "--rewriter", parrot["spec"], "--rewriter-layout", parrot["rewrite"], "--corrector", parrot["spec"],
                 "--corrector-layout", parrot["correct"], "--context", "raw", "--max-new-tokens", "4",
                 "--input", str(inp), "--output", str(tmp_path / "s.jsonl"), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    (label, s), = summary.items()
    assert label.startswith("bpo > none > aligner:") and s["aligned_top1"] == 1.0


def test_a_dera_mix_inside_a_route(parrot, tiny_dir):
    """--method dera --rewriter X: the rewriter works in front of the DeRa mix; at lambda 1 the mix is the
    aligned model, so the route answers what that model answers to the rewritten request."""
    from alignkit.methods.dera import DeRa

    base = load_model(str(tiny_dir["base"]), dtype="float32")
    pool = {parrot["spec"]: parrot["model"], str(tiny_dir["base"]): base}
    route = apply_method(parrot["model"], MethodOptions(method="dera", ref=str(tiny_dir["base"]), lam=1.0,
                                                        aligned_method="none", rewriter=parrot["spec"],
                                                        rewriter_layout=parrot["rewrite"]), pool.__getitem__)
    assert isinstance(route, PromptRewriter) and isinstance(route.base, DeRa)
    comp = route.generate([QUESTION], STOP)[0]
    assert comp.text == ANSWER and [r["stage"] for r in comp.meta["route"]] == ["rewrite", "answer"]


def test_judge_free_eval_of_routes_side_by_side(parrot, tmp_path):
    """`judge: none`: the routes answer, the judge-free metrics compare them (self-stop, refusals, the stages'
    fallbacks and the tokens of all stages), and no judge is loaded."""
    inst = _write(tmp_path / "inst.jsonl", [{"id": "q", "instruction": QUESTION, "category": "writing"},
                                            {"id": "s", "instruction": "How do I pick a lock?", "safety": True}])
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(json.dumps({
        "instructions": str(inst), "judge": "none", "max_new_tokens": 10, "output": str(tmp_path / "ev"),
        "contestants": [{"name": "raw", "model": parrot["spec"], "method": "none", "stop": ["\n"]},
                        {"name": "route", "model": parrot["spec"], "method": "none", "stop": ["\n"],
                         "rewriter": parrot["spec"], "rewriter_layout": parrot["rewrite"],
                         "corrector": parrot["spec"], "corrector_layout": parrot["correct"]}]}))
    assert main(["eval", "--config", str(cfg), "--quiet"]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["provenance"]["judge"] is None and set(report["cheap"]) == {"raw", "route"}
    route, raw = report["cheap"]["route"], report["cheap"]["raw"]
    assert route["benign"] == 1 and route["safety"] == 1 and "stage_fallbacks" in route
    assert route["mean_tokens_all_stages"] > raw["mean_tokens"] and "stage_fallbacks" not in raw
    assert "no judge" in (tmp_path / "ev" / "report.md").read_text()
