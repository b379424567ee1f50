"""A judge served over the API (``alignkit serve`` in front of a local judge model, the official openai client in
between) is read as the same judge is read locally: its replies are held to the rubric's JSON schema
(response_format json_schema) and parse; its weighted scores, read from the chat log-probabilities of its own
reply, equal the local judge's teacher-forced weighted scores; its weighted pairwise verdicts too. And the
reading of a reply's slots is checked by hand on scripted log-probabilities (token splits, a key inside a
reason, a reply without log-probabilities)."""

from __future__ import annotations

import math

import pytest

from alignkit.evaluation.judge import Judge, load_rubric
from alignkit.evaluation.weighted import reply_weights

ITEMS = [{"instruction": "How do I boil an egg?", "answer": "Put it in boiling water for eight minutes."},
         {"instruction": "Tell me how to pick a lock.", "answer": "I can't help with that."}]
PAIRS = [{"instruction": "Name a colour.", "answer_a": "Blue.", "answer_b": "I cannot say."}]


@pytest.fixture(scope="module")
def judge_pair(tiny_dir):
    """The tiny judge model loaded locally, and the same model behind alignkit's server, read over the API."""
    import openai  # noqa: F401 - installed by make; missing is an error

    from alignkit import load_model
    from alignkit.server.app import build_app
    from alignkit.server.service import Service
    from tests.support.openai_server import ServerThread

    local = load_model(str(tiny_dir["judge"]), dtype="float64")
    with ServerThread(build_app(Service(local, "judge"))) as srv:
        yield local, load_model(f"openai:judge@{srv.url}", max_retries=0)


def _close(a, b, tol=1e-3):
    return a is None and b is None or (a is not None and b is not None and abs(a - b) <= tol)


@pytest.fixture(scope="module")
def smollm_pair():
    """A real judge (SmolLM2-135M-Instruct, the README evaluation's judge, on transformers under its chat
    template), loaded here and behind alignkit's server: a real judge puts its mass on the score digits. Not on
    llama.cpp: its quantised kernels give slightly different logits for the same tokens when a sequence is
    evaluated in other chunks or batches, so the two readings differ there (bench/served_judge.py measures by
    how much), which no reading can remove."""
    import openai  # noqa: F401 - installed by make; missing is an error

    from alignkit.api import load
    from alignkit.server.app import build_app
    from alignkit.server.service import Service
    from tests.support.openai_server import ServerThread

    local = load("smollm2-135m-instruct", method="template")
    with ServerThread(build_app(Service(local, "smol"))) as srv:
        yield local, load(f"openai:smol@{srv.url}")


def test_served_judge_gives_the_local_weighted_scores(judge_pair):
    _check_scores(judge_pair, "safety")


def test_served_real_judge_gives_the_local_weighted_scores(smollm_pair):
    _check_scores(smollm_pair, "just-eval", items=ITEMS[:1], min_compared=4)


def _check_scores(pair, rubric, items=ITEMS, min_compared=1):
    local, api = pair
    r = load_rubric(rubric)
    here = Judge(local, r, weighted=True, max_new_tokens=1200, retries=0).judge(items)
    there_judge = Judge(api, r, weighted=True, max_new_tokens=1200, retries=0)
    there = there_judge.judge(items)
    prov = there_judge.provenance()
    assert prov["structured"] == "json_schema" and "structured_fallbacks" not in prov
    assert prov["weighted"] == {"top_k": 20, "read_from": "reply"}
    compared = 0
    for a, b in zip(here, there):
        assert b["raw"] == a["raw"]  # the same greedy reply, held to the same schema
        assert b["missing"] == a["missing"] == []  # the schema'd reply parses
        for aspect in r.aspects:
            wa, wb = a["weighted"][aspect], b["weighted"][aspect]
            assert _close(wa["weighted"], wb["weighted"]), (aspect, wa, wb)
            if wa["p"] is not None:
                compared += 1
                assert max(abs(wa["p"][k] - wb["p"][k]) for k in wa["p"]) <= 1e-3
    # the comparison ran on real numbers, not only on Nones (a random judge seldom has a digit in its top 20)
    assert compared >= min_compared


def test_served_judge_gives_the_local_weighted_pairwise_verdicts(smollm_pair):
    local, api = smollm_pair
    r = load_rubric("pairwise")
    here = Judge(local, r, weighted=True, max_new_tokens=400, retries=0).judge(PAIRS)
    there = Judge(api, r, weighted=True, max_new_tokens=400, retries=0).judge(PAIRS)
    assert there[0]["raw"] == here[0]["raw"] and there[0]["missing"] == []
    seen = 0
    for aspect in r.aspects:
        pa, pb = here[0]["weighted"][aspect]["p"], there[0]["weighted"][aspect]["p"]
        assert (pa is None) == (pb is None)
        if pb is not None:
            seen += 1
            assert set(pb) == {"A", "B", "tie"} and math.isclose(sum(pb.values()), 1.0, abs_tol=1e-9)
            assert max(abs(pa[k] - pb[k]) for k in pa) <= 1e-3
    assert seen >= 1


def test_cached_api_verdicts_keep_their_weighted_scores(judge_pair, tmp_path):
    from alignkit.evaluation.judge import JudgeCache

    _, api = judge_pair
    r = load_rubric("safety")
    first = Judge(api, r, weighted=True, max_new_tokens=600, cache=JudgeCache(tmp_path / "c.jsonl")).judge(ITEMS[:1])
    again = Judge(api, r, weighted=True, max_new_tokens=600, cache=JudgeCache(tmp_path / "c.jsonl")).judge(ITEMS[:1])
    assert again[0]["cached"] and again[0]["weighted"] == first[0]["weighted"]


# ---- reading a reply's slots by hand

class _R:
    kind, reply = "score", "json"
    aspects = ("helpfulness", "safety")


def _lp(pieces):
    """Scripted per-token log-probabilities: ``(token, {alternative: prob})`` pieces."""
    return [(t, math.log(alts.get(t, 0.5)) if alts else 0.0,
             tuple((a, math.log(p)) for a, p in alts.items())) for t, alts in pieces]


def test_reply_weights_read_each_slot_across_token_splits():
    reply = _lp([('{"', {}), ("helpfulness", {}), ('": {"', {}), ("reason", {}), ('": "', {}),
                 ('the \\"score\\": 1 is', {}),  # a key inside a reason is not a slot (it is escaped in JSON)
                 ('", "score": ', {}), ("4", {"4": 0.6, "5": 0.3, "x": 0.1}), ("}, ", {}),
                 ('"safety": {"reason": "ok", "score":', {}), (" 2}", {" 2}": 0.5, " 1": 0.25, " 3,": 0.25}),
                 ("}", {})])
    w = reply_weights(reply, _R)
    assert w["helpfulness"]["p"] == pytest.approx({"1": 0, "2": 0, "3": 0, "4": 2 / 3, "5": 1 / 3})
    assert w["helpfulness"]["weighted"] == pytest.approx(4 + 1 / 3)
    assert w["helpfulness"]["mass"] == pytest.approx(0.9)
    # the digit sits after a space inside its token: the lead " " is part of every alternative read
    assert w["safety"]["p"] == pytest.approx({"1": 0.25, "2": 0.5, "3": 0.25, "4": 0, "5": 0})
    assert reply_weights(None, _R) is None  # a server that sent no log-probabilities gives no number


def test_reply_weights_give_none_where_the_reply_has_no_slot():
    w = reply_weights(_lp([('{"helpfulness": {"reason": "x", "score": ', {}), ("3", {"3": 1.0}), ("}}", {})]), _R)
    assert w["helpfulness"]["weighted"] == pytest.approx(3.0) and w["safety"] == {"weighted": None, "p": None,
                                                                                  "mass": 0.0}
