"""A local judge held to its rubric's reply shape (a JSON schema enforced in alignkit's token loop): the tiny
random-weight judge, which writes no JSON of its own, gives a readable verdict for every aspect, laid out exactly as
the canonical shape the weighted reading rewrites."""

from __future__ import annotations

import json

import pytest

from alignkit.evaluation.judge import REASON_CHARS, Judge, JudgeCache, load_rubric
from alignkit.evaluation.weighted import _pairwise_prefix, _score_prefix

ITEMS = [{"instruction": "How do I boil an egg?", "answer": "Put it in boiling water for eight minutes."},
         {"instruction": "Name a prime number.", "answer": "Seven."}]
PAIRS = [{"instruction": "Name a colour.", "answer_a": "Blue.", "answer_b": "I like turtles."}]
# the shipped rubrics' prompts are longer than the tiny model's 512-token context: short ones of the same kinds
RUBRICS = {
    "one": ("score", "[safety]", 'Reply {"safety": {"reason": "<one sentence>", "score": <1-5>}}', "json"),
    "three": ("score", "[helpfulness, clarity, depth]", "Reply with reason and score per aspect.", "json"),
    "pairs": ("pairwise", "[helpfulness, clarity]", "Reply with A, B or tie per aspect, then a reason.", "json"),
    "digit": ("score", "[overall]", "Reply with one digit 1-5.", "digit"),
}


@pytest.fixture
def rubrics(tmp_path):
    out = {}
    for name, (kind, aspects, ask, reply) in RUBRICS.items():
        fields = "{answer_a} / {answer_b}" if kind == "pairwise" else "{answer}"
        (tmp_path / f"{name}.yaml").write_text(f"id: {name}\nkind: {kind}\nreply: {reply}\naspects: {aspects}\n"
                                               f"system: Grade.\nuser: |-\n  Q: {{instruction}}\n  A: {fields}\n"
                                               f"  {ask}\n")
        out[name] = str(tmp_path / f"{name}.yaml")
    return out


def _judge(model, rubric, *, structured, cache=None, max_new_tokens=1000):
    return Judge(model, load_rubric(rubric), retries=0, max_new_tokens=max_new_tokens, structured=structured,
                 cache=cache, weighted=True, top_k=20)


def test_score_rubrics_always_read_and_in_the_canonical_layout(tiny_aligned, rubrics):
    for rubric in (rubrics["one"], rubrics["three"]):
        aspects = list(load_rubric(rubric).aspects)
        free = _judge(tiny_aligned, rubric, structured=False, max_new_tokens=60).judge(ITEMS)
        assert all(r["missing"] == aspects and not r["raw"][0].startswith("[judge error") for r in free), \
            [r["raw"] for r in free]  # it writes no JSON of its own
        held_judge = _judge(tiny_aligned, rubric, structured=True)
        assert held_judge.provenance()["structured"] == "schema"
        for res in held_judge.judge(ITEMS):
            assert res["missing"] == []
            obj = json.loads(res["raw"][0])
            assert list(obj) == aspects
            for a in aspects:
                assert set(obj[a]) == {"reason", "score"} and obj[a]["score"] in range(1, 6)
                assert len(obj[a]["reason"]) <= REASON_CHARS
                assert res["result"][a] == obj[a]
            # the weighted reading's context at every slot is what the judge itself wrote there
            reasons = [obj[a]["reason"] for a in aspects]
            values = [obj[a]["score"] for a in aspects]
            for slot in range(len(aspects)):
                assert res["raw"][0].startswith(_score_prefix(aspects, reasons, values, slot))
            assert all(res["weighted"][a]["p"] is not None or res["weighted"][a]["mass"] < 0.01 for a in aspects)


def test_pairwise_and_digit_rubrics(tiny_aligned, rubrics):
    aspects = list(load_rubric(rubrics["pairs"]).aspects)
    res = _judge(tiny_aligned, rubrics["pairs"], structured=True).judge(PAIRS)[0]
    assert res["missing"] == []
    obj = json.loads(res["raw"][0])
    assert list(obj) == aspects + ["reason"] and all(obj[a] in ("A", "B", "tie") for a in aspects)
    values = [obj[a] for a in aspects]
    assert all(res["raw"][0].startswith(_pairwise_prefix(aspects, values, s)) for s in range(len(aspects)))
    digit = _judge(tiny_aligned, rubrics["digit"], structured=True).judge(ITEMS)
    assert [r["raw"][0] in list("12345") and r["missing"] == [] for r in digit] == [True, True]


def test_held_and_free_replies_are_cached_apart(tiny_aligned, rubrics, tmp_path):
    one = rubrics["one"]
    cache = JudgeCache(tmp_path / "cache.jsonl")
    free = _judge(tiny_aligned, one, structured=False, cache=cache, max_new_tokens=60).judge(ITEMS[:1])[0]
    held = _judge(tiny_aligned, one, structured=True, cache=cache).judge(ITEMS[:1])[0]
    assert not held["cached"] and held["raw"] != free["raw"]
    again = _judge(tiny_aligned, one, structured=True, cache=JudgeCache(tmp_path / "cache.jsonl")).judge(ITEMS[:1])[0]
    assert again["cached"] and again["raw"] == held["raw"]


def test_a_reply_cut_by_the_token_limit_is_missing_never_guessed(tiny_aligned, rubrics):
    res = _judge(tiny_aligned, rubrics["three"], structured=True, max_new_tokens=12).judge(ITEMS[:1])[0]
    raw = res["raw"][0]
    assert raw and '{"helpfulness": {"reason": "'.startswith(raw[:28])  # the shape's start, cut by the limit
    assert res["missing"] == ["helpfulness", "clarity", "depth"]


def test_a_bad_reply_setting_in_a_rubric_file_is_refused(tmp_path):
    from alignkit.errors import InputError

    text = (tmp_path / "r.yaml")
    src = load_rubric("just-eval")
    text.write_text(json.dumps({"id": "x", "kind": "score", "aspects": list(src.aspects), "system": "s",
                                "user": "{instruction} {answer}", "reply": "digit"}))
    with pytest.raises(InputError, match="reply must be json, or digit for a score rubric of one aspect"):
        load_rubric(str(text))
