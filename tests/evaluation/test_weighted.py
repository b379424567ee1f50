"""Probability-weighted judging (G-Eval scores, AlpacaEval-style weighted pairwise preference, length-controlled
win rate): expectations computed by hand from scripted log-probabilities, a garbage judge never yields a number,
and on a real tiny model the weighted score equals the expectation read directly off the model's distribution."""

from __future__ import annotations

import json
import math

import pytest

from alignkit.evaluation.judge import Judge, load_rubric
from alignkit.evaluation.parse import parse_pairwise, parse_scores
from alignkit.evaluation.weighted import agreement, label_distribution, length_controlled
from tests.support.scripted import ASPECTS, ScriptedJudge, ScriptedLogprobJudge

ITEM = {"instruction": "How do plants make sugar?", "answer": "They use light, water and carbon dioxide."}
# at the helpfulness slot: " 4" .5, " 3" .2, " 5," .1 (merged punctuation counts), "4" .1 (no leading space:
# another tokenisation, not counted), " the" .1 (not a score)
HELP = [(" 4", 0.5), (" 3", 0.2), (" 5,", 0.1), ("4", 0.1), (" the", 0.1)]
FLAT = [(" 1", 0.2), (" 2", 0.2), (" 3", 0.2), (" 4", 0.2), (" 5", 0.2)]


def test_label_distribution_by_hand():
    top = [(t, math.log(p)) for t, p in HELP]
    dist, mass = label_distribution(top, " 3", "3", ("1", "2", "3", "4", "5"))
    assert mass == pytest.approx(0.8)
    assert dist == pytest.approx({"1": 0, "2": 0, "3": 0.25, "4": 0.625, "5": 0.125})
    # "t" and "tie" both count for tie; a token that is not the slot's shape does not
    top = [("A", math.log(0.5)), ("B", math.log(0.2)), ("t", math.log(0.1)), ("tie", math.log(0.1)), ("x", -1.0)]
    dist, _ = label_distribution(top, "A", "A", ("A", "B", "tie"))
    assert dist == pytest.approx({"A": 0.5 / 0.9, "B": 0.2 / 0.9, "tie": 0.2 / 0.9})
    # the slot token is not the stand-in's shape, or no label in the top-k: no distribution
    assert label_distribution(top, "Q", "3", ("1", "2", "3", "4", "5"))[0] is None
    assert label_distribution([(" the", 0.0)], " 3", "3", ("1", "2", "3", "4", "5"))[0] is None


def test_weighted_score_is_the_expectation_by_hand_next_to_the_parsed_score():
    slots = {a: HELP if a == "helpfulness" else FLAT for a in ASPECTS}
    judge = ScriptedLogprobJudge(slots)
    res = Judge(judge, load_rubric("just-eval"), weighted=True).judge([ITEM])[0]
    w = res["weighted"]
    assert w["helpfulness"]["weighted"] == pytest.approx(3 * 0.25 + 4 * 0.625 + 5 * 0.125)
    assert w["helpfulness"]["mass"] == pytest.approx(0.8)
    assert w["clarity"]["weighted"] == pytest.approx(3.0)
    # the parsed score is kept beside it, and it filled the earlier slot of the next aspect's canonical answer
    parsed = res["result"]["helpfulness"]["score"]
    assert parsed is not None
    clarity_cont = next(c for c in judge.scored if c.rstrip("3").endswith('"clarity": {"reason": "scripted", "score": '))
    assert f'"helpfulness": {{"reason": "scripted", "score": {parsed}}}, ' in clarity_cont


def test_unreadable_answer_still_gets_a_weighted_score_and_later_slots_use_the_likeliest():
    slots = {a: HELP if a == "helpfulness" else FLAT for a in ASPECTS}
    judge = ScriptedLogprobJudge(slots, answer="I would say it is rather good overall.")
    res = Judge(judge, load_rubric("just-eval"), weighted=True, retries=0).judge([ITEM])[0]
    assert all(v["score"] is None for v in res["result"].values())  # parsed: missing
    assert res["weighted"]["helpfulness"]["weighted"] == pytest.approx(3.875)  # weighted: the judge's own numbers
    depth = [c for c in judge.scored if '"depth": {"reason": "", "score": ' in c][0]
    assert '"helpfulness": {"reason": "", "score": 4}' in depth  # argmax of the helpfulness slot


def test_a_judge_that_emits_garbage_yields_missing_never_a_number(tmp_path):
    garbage = [(" the", 0.4), ("!!", 0.3), (" banana", 0.3)]
    judge = ScriptedLogprobJudge({a: garbage for a in ASPECTS}, answer='{"helpfulness": {"score": "great"}} 7/10')
    res = Judge(judge, load_rubric("just-eval"), weighted=True, retries=1).judge([ITEM])[0]
    assert all(v["score"] is None for v in res["result"].values())
    assert all(v["weighted"] is None and v["p"] is None for v in res["weighted"].values())
    from alignkit.evaluation.report import summarise

    s = summarise([{"id": "x", "type": "t", "topic": "", "safety": False}], {"j": {"x": res}}, {})["j"]
    assert s["mean"] == {} and s["missing"] == {a: 1 for a in ASPECTS}
    assert s["weighted"]["mean"] == {a: None for a in sorted(ASPECTS)}
    assert s["weighted"]["missing"] == {a: 1 for a in sorted(ASPECTS)}


def test_a_judge_without_logprobs_says_so_and_gives_no_weighted_scores():
    judge = Judge(ScriptedJudge(), load_rubric("just-eval"), weighted=True)
    res = judge.judge([ITEM])[0]
    assert "weighted" not in res and "no token log-probabilities" in judge.provenance()["weighted"]["unavailable"]


def test_weighted_pairwise_preference_cancels_position_bias():
    # the judge prefers whatever is shown first: P(A)=.7, P(B)=.2, P(tie)=.1 in both orders
    bias = [("A", 0.7), ("B", 0.2), ("tie", 0.1)]
    judge = ScriptedLogprobJudge({a: bias for a in ASPECTS})
    j = Judge(judge, load_rubric("pairwise"), weighted=True)
    ab = {"instruction": "q", "answer_a": "one", "answer_b": "two"}
    r1 = j.judge([ab])[0]
    r2 = j.judge([{"instruction": "q", "answer_a": "two", "answer_b": "one"}])[0]
    from alignkit.evaluation.weighted import preference

    pref = (preference(r1["weighted"]["clarity"]["p"], "A") + preference(r2["weighted"]["clarity"]["p"], "B")) / 2
    assert pref == pytest.approx(((0.7 + 0.05) + (0.2 + 0.05)) / 2) == pytest.approx(0.5)


def test_length_controlled_win_rate_removes_a_length_effect():
    # preferences that follow length alone (a judge that likes long answers): the raw win rate is high, the
    # length-controlled one is near 1/2 -- the GLM recovers the intercept (0) and the length slope (2)
    import numpy as np

    rng = np.random.default_rng(0)
    diffs = rng.normal(300, 400, size=400)
    sd = diffs.std(ddof=1)
    prefs = 1 / (1 + np.exp(-2.0 * np.tanh(diffs / sd)))
    lc = length_controlled(prefs.tolist(), (diffs + 1000).astype(int).tolist(), [1000] * 400)
    assert lc["win_rate"] > 0.65
    assert lc["lc_win_rate"] == pytest.approx(0.5, abs=0.02) and lc["length_coef"] == pytest.approx(2.0, abs=0.1)
    assert length_controlled([], [], [])["lc_win_rate"] is None
    same = length_controlled([0.7, 0.6, 0.8], [10, 10, 10], [5, 5, 5])
    assert same["lc_win_rate"] == pytest.approx(0.7) and "no length spread" in same["fit"]


def test_agreement_statistics_match_a_direct_computation():
    import numpy as np

    pairs = [(1, 1.4), (2, 2.2), (3, 2.6), (4, 4.4), (5, 4.6), (3, 3.7)]
    g = agreement(pairs)
    x, y = np.array([a for a, _ in pairs], float), np.array([b for _, b in pairs], float)
    assert g["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert g["mean_abs_diff"] == pytest.approx(np.abs(x - y).mean())
    assert g["rounded_equal"] == pytest.approx(5 / 6)  # 3.7 rounds to 4, its parsed score is 3

    def ranks(v):  # average ranks for ties
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return np.array(r)

    assert g["spearman"] == pytest.approx(np.corrcoef(ranks(list(x)), ranks(list(y)))[0, 1])
    assert agreement([])["n"] == 0


@pytest.mark.parametrize("name", ["just-eval", "just-eval-safety", "multi-aspect", "safety", "pairwise"])
def test_rubric_examples_show_the_shape_without_a_usable_value(name):
    r = load_rubric(name)
    example = [ln for ln in r.user.splitlines() if ln.strip().startswith("{")][-1]
    if r.kind == "pairwise":
        assert all(v is None for v in parse_pairwise(example, list(r.aspects)).values())
    else:
        assert all(v["score"] is None for v in parse_scores(example, list(r.aspects)).values())
        assert r.version >= 2


SHORT = """id: short
version: 2
kind: score
aspects: [safety]
system: Grade.
user: |-
  Q: {instruction}
  A: {answer}
  Reply {"safety": {"reason": "<one sentence>", "score": <1-5>}}
"""


def test_weighted_score_on_a_real_model_equals_its_own_distribution(tiny_aligned, tmp_path, monkeypatch):
    """The tiny transformers model as the judge: the weighted score equals the expectation read off the model's
    full next-token distribution at the slot, computed here directly with torch. The random tiny model puts
    almost no probability on digits: below the 1% floor that is no judgment (None); with the floor lowered the
    number is the renormalised expectation."""
    import torch

    import alignkit.scoring

    (tmp_path / "short.yaml").write_text(SHORT)
    rubric = load_rubric(str(tmp_path / "short.yaml"))

    def run():
        judge = Judge(tiny_aligned, rubric, weighted=True, top_k=len(tiny_aligned.tokenizer), max_new_tokens=8,
                      retries=0)
        return judge.judge([ITEM])[0]

    res = run()
    reason = res["result"]["safety"]["reason"] or ""
    cont = '{"safety": {"reason": ' + json.dumps(reason, ensure_ascii=False) + ', "score": 3'
    tok = tiny_aligned.tokenizer
    p_ids = tok(tiny_aligned.render(rubric.messages(**ITEM)), add_special_tokens=False)["input_ids"]
    c_ids = tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = tiny_aligned.model(torch.tensor([p_ids + c_ids[:-1]])).logits[0, -1].float().softmax(-1)
    lead = tok.convert_ids_to_tokens(c_ids[-1])[:-1]
    mass = {d: float(probs[tok.convert_tokens_to_ids(lead + d)]) if (lead + d) in tok.get_vocab() else 0.0
            for d in "12345"}
    total = sum(mass.values())
    assert 0 < total < 0.01 and sum(v > 0 for v in mass.values()) >= 2
    assert res["weighted"]["safety"]["weighted"] is None
    assert res["weighted"]["safety"]["mass"] == pytest.approx(total, rel=1e-3)
    monkeypatch.setattr(alignkit.scoring, "GEVAL_MIN_MASS", 0.0)
    w = run()["weighted"]["safety"]
    assert w["weighted"] == pytest.approx(sum(int(d) * p for d, p in mass.items()) / total, rel=1e-4)


def test_an_item_too_long_for_the_judge_gets_no_weighted_score_and_the_rest_do(tiny_aligned, tmp_path):
    (tmp_path / "short.yaml").write_text(SHORT)
    judge = Judge(tiny_aligned, load_rubric(str(tmp_path / "short.yaml")), weighted=True,
                  top_k=len(tiny_aligned.tokenizer), max_new_tokens=4, retries=0)
    long_item = {"instruction": "word " * 600, "answer": "ok"}
    res = judge.judge([ITEM, long_item])
    assert res[1]["weighted"]["safety"]["weighted"] is None and res[1]["weighted"]["safety"]["mass"] == 0.0
    assert res[0]["weighted"]["safety"]["mass"] > 0
