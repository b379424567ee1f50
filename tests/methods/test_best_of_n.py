"""Best-of-N on tiny real models: the N candidates are exactly N seeded generations of the wrapped model, the
returned answer is the scorer's argmax, all N are kept with their scores; it composes with methods and route
stages, streams, runs behind the server and in the commands; AI-feedback pairs follow the scorer."""

from __future__ import annotations

import json

import pytest

from alignkit import GenerationConfig
from alignkit.methods import MethodOptions, apply_method
from alignkit.methods.best_of_n import BestOfN
from alignkit.scoring import Score, Scorer

PROMPTS = ["The quick brown", "Once upon a time", "def main("]


class CountScorer(Scorer):
    """Rates an answer by how often a character occurs in it (deterministic, easy to check); ``unrated``
    answers containing a marker get no score."""

    kind = "count"

    def __init__(self, char: str = "e", unrated: str | None = None) -> None:
        self.char, self.unrated, self.spec, self.calls = char, unrated, f"count:{char}", 0

    def score(self, prompts, answers):
        self.calls += 1
        return [Score(None, "marked unrated") if self.unrated and self.unrated in a else Score(float(a.count(self.char)))
                for a in answers]


CFG = GenerationConfig(max_new_tokens=10, temperature=1.5, seed=7)


@pytest.fixture(scope="module")
def raw(tiny_base):
    return apply_method(tiny_base, MethodOptions(method="none"))


def test_candidates_are_seeded_generations_and_the_argmax_is_returned(raw):
    bon = BestOfN(raw, CountScorer(), 4)
    got = bon.generate(PROMPTS, CFG)
    for p, comp in zip(PROMPTS, got):
        info = comp.meta["best_of_n"]
        # candidate j is exactly what the wrapped model says with seed + j
        singles = [raw.generate([p], GenerationConfig(max_new_tokens=10, temperature=1.5, seed=7 + j))[0]
                   for j in range(4)]
        assert [c["text"] for c in info["candidates"]] == [s.text for s in singles]
        assert [c["score"] for c in info["candidates"]] == [float(s.text.count("e")) for s in singles]
        best = max(range(4), key=lambda j: (info["candidates"][j]["score"], -j))
        assert info["chosen"] == best and comp.text == singles[best].text
        assert comp.meta["usage"]["completion_tokens"] == sum(s.completion_tokens for s in singles)
        assert comp.meta["route"][-1]["stage"] == "select" and comp.meta["route"][-1]["n"] == 4
    assert len({c["text"] for c in got[0].meta["best_of_n"]["candidates"]}) > 1  # the samples differ


def test_greedy_requests_sample_at_the_methods_temperature(raw):
    got = BestOfN(raw, CountScorer(), 3, sample_temperature=1.5).generate(PROMPTS[:1], GenerationConfig(
        max_new_tokens=10, seed=7))[0]
    want = [raw.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=10, temperature=1.5, seed=7 + j))[0].text
            for j in range(3)]
    assert [c["text"] for c in got.meta["best_of_n"]["candidates"]] == want


def test_an_unrated_candidate_is_never_chosen_and_none_rated_falls_back(raw):
    comps = BestOfN(raw, CountScorer(char="e", unrated="e"), 4).generate(PROMPTS, CFG)
    for comp in comps:
        info = comp.meta["best_of_n"]
        rated = [c for c in info["candidates"] if c["score"] is not None]
        if rated:
            assert info["candidates"][info["chosen"]]["score"] is not None
        else:
            assert "no candidate could be rated" in info["note"]
            assert comp.meta["route"][-1]["fallback"]


def test_best_of_n_composes_with_methods_and_streams(tiny_base, tiny_dir):
    from alignkit.api import resources
    from alignkit.methods.tree import NODES

    assert NODES["best-of-n"].slots == ("model",)
    pool = resources()
    model = apply_method(pool(str(tiny_dir["aligned"])), MethodOptions(
        method="template", scorer="geval:" + str(tiny_dir["judge"]), n=2), pool)
    assert model.info()["method"] == "best-of-n(2) > template"
    out = model.generate(["Name a colour."], CFG)[0]
    assert out.meta["best_of_n"]["scorer"].startswith("geval:")
    events = list(model.stream(["Name a colour."], CFG))
    assert events[-1].completion.text == out.text and "".join(e.text for e in events) == out.text


def test_best_of_n_behind_the_server(raw):
    import openai

    from alignkit.server.app import build_app
    from alignkit.server.service import Service
    from tests.support.openai_server import ServerThread

    bon = BestOfN(raw, CountScorer(), 3)
    want = bon.generate(["The quick brown"], CFG)[0].text
    with ServerThread(build_app(Service(bon, "bon"))) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        r = client.completions.create(model="bon", prompt="The quick brown", max_tokens=10, temperature=1.5, seed=7)
        assert r.choices[0].text == want
        s = "".join(c.choices[0].text for c in client.completions.create(
            model="bon", prompt="The quick brown", max_tokens=10, temperature=1.5, seed=7, stream=True))
        assert s == want


def test_best_of_n_from_the_command_line(tiny_dir, tmp_path, capsys):
    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "out.jsonl"
    spec = "geval:" + str(tiny_dir["judge"])
    assert main(["generate", "--model", str(tiny_dir["base"]), "--method", "none", "--scorer", spec, "--n", "3",
                 "--input", str(inp), "--output", str(out), "--max-new-tokens", "6", "--temperature", "1.2",
                 "--seed", "3"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["meta"]["best_of_n"]["candidates"]) == 3 for r in rows)
    assert all(r["route"][-1]["stage"] == "select" for r in rows)
    capsys.readouterr()
    assert main(["chat", "--model", str(tiny_dir["base"]), "--method", "none", "--scorer", spec, "--n", "2",
                 "--message", "The quick brown", "--max-new-tokens", "4", "--temperature", "1.5"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["generate", "--model", str(tiny_dir["base"]), "--method", "best-of-n", "--input", str(inp),
                 "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "needs --scorer" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_dir["base"]), "--scorer", "nope:x", "--input", str(inp),
                 "--output", str(tmp_path / "y.jsonl")]) == 2
    assert "unknown kind 'nope'" in capsys.readouterr().err


def test_ranked_pairs_follow_the_scorer(raw, tmp_path):
    from alignkit.training.synth import synthesize_ranked_pairs

    records = [{"id": i, "prompt": p} for i, p in enumerate(PROMPTS)]
    scorer = CountScorer()
    out, removed = tmp_path / "pairs.jsonl", tmp_path / "removed.jsonl"
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.5, seed=7)
    counts = synthesize_ranked_pairs(records, raw, cfg, scorer, str(out), k=4, min_margin=0.5,
                                     keep_truncated=True, removed=str(removed), report=lambda s: None)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    dropped = [json.loads(x) for x in removed.read_text().splitlines()] if removed.exists() else []
    assert counts["written"] == len(rows) and counts["dropped"] == len(dropped)
    assert len(rows) + len(dropped) == 3 and rows
    for r in rows:
        cands = [c for c in r["provenance"]["candidates"] if c.get("score") is not None]
        assert r["chosen"].count("e") == max(c["score"] for c in cands)
        assert r["rejected"].count("e") == min(c["score"] for c in cands)
        assert r["scores"]["margin"] > 0.5 and len(r["provenance"]["candidates"]) == 4
    for d in dropped:
        assert d["reason"] and len(d["candidates"]) == 4
    # resumed: nothing new, nothing twice
    again = synthesize_ranked_pairs(records, raw, cfg, scorer, str(out), k=4, min_margin=0.5, keep_truncated=True,
                                    removed=str(removed), report=lambda s: None)
    assert again["written"] == 0 and again["skipped_done"] == 3
    # a margin no pair can reach: every prompt is a tie, dropped with the reason
    ties = synthesize_ranked_pairs(records, raw, cfg, scorer, str(tmp_path / "t.jsonl"), k=4, min_margin=1000,
                                   keep_truncated=True, report=lambda s: None)
    assert ties["written"] == 0 and ties["tie"] >= 1 and ties["tie"] + ties["too_few"] == ties["dropped"] == 3


def test_random_lower_picks_a_candidate_below_the_margin(raw, tmp_path):
    from alignkit.training.synth import synthesize_ranked_pairs

    records = [{"id": i, "prompt": p} for i, p in enumerate(PROMPTS)]
    out = tmp_path / "pairs.jsonl"
    synthesize_ranked_pairs(records, raw, CFG, CountScorer(), str(out), k=4, pick="random-lower",
                            keep_truncated=True, report=lambda s: None)
    for r in (json.loads(x) for x in out.read_text().splitlines()):
        assert r["scores"]["chosen"] > r["scores"]["rejected"]
        assert r["rejected"] in [c["text"] for c in r["provenance"]["candidates"]]


def test_ranked_pairs_command(tiny_dir, tmp_path, capsys):
    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    base = ["data", "pairs", "--input", str(inp), "--output", str(tmp_path / "p.jsonl"), "--chosen-model",
            str(tiny_dir["base"]), "--chosen-method", "none", "--rank-by", "geval:" + str(tiny_dir["judge"]),
            "--max-new-tokens", "6", "--keep-truncated"]
    assert main(base) == 2 and "--temperature > 0" in capsys.readouterr().err  # greedy: k identical answers
    assert main(base + ["--temperature", "1.5", "--seed", "1", "--k", "3", "--removed", str(tmp_path / "r.jsonl")]) == 0
    err = capsys.readouterr().err
    assert '"written"' in err
    kept = (tmp_path / "p.jsonl").read_text().splitlines() if (tmp_path / "p.jsonl").exists() else []
    gone = (tmp_path / "r.jsonl").read_text().splitlines() if (tmp_path / "r.jsonl").exists() else []
    assert len(kept) + len(gone) == 3
    assert main(base + ["--temperature", "1", "--rejected-method", "urial"]) == 2
    assert "does not apply to --rank-by" in capsys.readouterr().err
    plain = [a for a in base if a not in ("--rank-by", "geval:" + str(tiny_dir["judge"]))]
    assert main(plain + ["--k", "3"]) == 2  # --k without --rank-by
    assert "--rank-by only" in capsys.readouterr().err


def test_best_of_n_as_an_eval_contestant(tiny_dir, tmp_path):
    from alignkit.cli.main import main

    inst = tmp_path / "inst.jsonl"
    inst.write_text("".join(json.dumps({"id": f"q{i}", "instruction": p}) + "\n" for i, p in enumerate(PROMPTS)))
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(json.dumps({
        "instructions": str(inst), "judge": "none", "max_new_tokens": 6, "output": str(tmp_path / "ev"),
        "contestants": [{"name": "raw", "model": str(tiny_dir["base"]), "method": "none"},
                        {"name": "bon", "model": str(tiny_dir["base"]), "method": "none", "n": 3,
                         "scorer": "geval:" + str(tiny_dir["judge"])}]}))
    assert main(["eval", "--config", str(cfg), "--quiet"]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert set(report["cheap"]) == {"raw", "bon"}
    answers = [json.loads(x) for x in (tmp_path / "ev" / "answers" / "bon.jsonl").read_text().splitlines()]
    # the tokens of all N candidates count in the route's cost
    assert report["cheap"]["bon"]["mean_tokens_all_stages"] > report["cheap"]["raw"]["mean_tokens"]
    assert len(answers) == 3 and all(len(a["best_of_n"]["candidates"]) == 3 for a in answers)
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"instructions": str(inst), "judge": "none", "output": str(tmp_path / "ev2"),
                               "contestants": [{"name": "b", "model": "x", "n": 0, "scorer": "reward:x"}]}))
    assert main(["eval", "--config", str(bad)]) == 2


def test_a_rewriter_best_of_n_and_a_corrector_are_one_route(tiny_dir, tmp_path):
    """rewriter -> best of N answers of the model -> corrector: every stage's record, in order, and the corrector
    corrects the chosen answer."""
    from alignkit.api import resources
    from alignkit.methods.routes import AnswerCorrector, PromptRewriter

    rewrite = tmp_path / "rw.yaml"
    rewrite.write_text('id: t-rewrite\nstage: rewrite\nmethod: none\ntemplate: "Improve: {prompt}\\nBetter:"\n'
                       'decoding: {max_new_tokens: 4}\n')
    correct = tmp_path / "co.yaml"
    correct.write_text('id: t-correct\nstage: correct\nmethod: none\ntemplate: "Q: {question} A:{answer}\\nFixed:"\n')
    pool = resources()
    spec = str(tiny_dir["base"])
    route = apply_method(pool(spec), MethodOptions(
        method="none", scorer="geval:" + str(tiny_dir["judge"]), n=3, rewriter=spec, rewriter_layout=str(rewrite),
        corrector=spec, corrector_layout=str(correct)), pool)
    assert isinstance(route, AnswerCorrector) and isinstance(route.upstream, PromptRewriter)
    assert isinstance(route.upstream.base, BestOfN)
    assert route.info()["method"] == "bpo > none > best-of-3 > aligner"
    comp = route.generate(["Name a colour."], CFG)[0]
    stages = [r["stage"] for r in comp.meta["route"]]
    assert stages == ["rewrite", "answer", "select", "correct"]
    select, correct_rec = comp.meta["route"][2], comp.meta["route"][3]
    chosen = comp.meta["route"][1]["output"]
    assert correct_rec["input"]["answer"] == chosen  # the corrector saw the chosen candidate
    assert len(select["scores"]) == 3


def test_n_without_a_scorer_is_refused(tiny_base):
    from alignkit.errors import InputError

    with pytest.raises(InputError, match="give --scorer"):
        apply_method(tiny_base, MethodOptions(method="none", n=8))


def test_best_of_n_around_dera(tiny_dir):
    """`--method dera --scorer S --n 2`: best-of-N chooses among DeRa's samples (the sides are plain models)."""
    from alignkit.api import resources
    from alignkit.methods.dera import DeRa

    pool = resources()
    model = apply_method(pool(str(tiny_dir["aligned"])), MethodOptions(
        method="dera", ref=str(tiny_dir["base"]), lam=0.5, aligned_method="none", scorer="geval:" + str(tiny_dir["judge"]),
        n=2), pool)
    assert isinstance(model, BestOfN) and isinstance(model.base, DeRa)
    assert len(model.generate(["Hi"], CFG)[0].meta["best_of_n"]["candidates"]) == 2
