"""Judge-answer parsing: fuzzed on garbage and near misses -- never a crash, never an invented score."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.evaluation.parse import parse_pairwise, parse_scores, valid_score

A = ["helpfulness", "clarity", "factuality", "depth", "engagement"]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_garbage_never_crashes_and_never_scores_without_a_digit(text):
    out = parse_scores(text, A)
    assert set(out) == set(A)
    for v in out.values():
        assert v["score"] is None or v["score"] in (1, 2, 3, 4, 5)
    if not re.search(r"[1-5]", text):
        assert all(v["score"] is None for v in out.values())
    assert set(parse_pairwise(text, A)) == set(A)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(A), st.one_of(st.integers(-3, 9), st.floats(allow_nan=True), st.text(max_size=5),
                                                      st.none(), st.booleans()), min_size=1))
def test_json_values_are_taken_only_when_valid(d):
    out = parse_scores(json.dumps({k: {"score": v, "reason": "r"} for k, v in d.items()}), A)
    for k, v in d.items():
        assert out[k]["score"] == valid_score(v)
        if out[k]["score"] is not None:
            assert out[k]["score"] in (1, 2, 3, 4, 5)


@pytest.mark.parametrize("value, expected", [
    (4, 4), (4.0, 4), ("4", 4), ("4/5", 4), (" 5 ", 5),
    (4.5, None), (0, None), (6, None), ("1-5", None), ("N/A", None), ("four", None), (True, None), (None, None),
])
def test_valid_score(value, expected):
    assert valid_score(value) == expected


def test_near_misses():
    t = 'Sure! ```json\n{"helpfulness": {"reason": "ok", "score": 4}, "clarity": {"score": "5"},}\n```'
    out = parse_scores(t, A)
    assert out["helpfulness"] == {"score": 4, "reason": "ok"} and out["clarity"]["score"] == 5
    assert out["depth"]["score"] is None
    assert parse_scores('{"helpfulness":{"score":1-5,"reason":"..."}}', A)["helpfulness"]["score"] is None
    lines = parse_scores("Helpfulness: 4/5\nClarity - 3\nFactuality: 4.5\nDepth: 10", A)
    assert [lines[a]["score"] for a in A] == [4, 3, None, None, None]
    assert parse_scores("{'helpfulness': 2}", A)["helpfulness"]["score"] == 2
    assert parse_pairwise('{"helpfulness": "Answer A", "clarity": "TIE", "depth": "C"}', A) == {
        "helpfulness": "A", "clarity": "tie", "factuality": None, "depth": None, "engagement": None}


def test_an_escaped_quote_does_not_end_a_json_string():
    # found by the fuzz test above: {"clarity": "\""} ended the string at the escaped quote
    text = json.dumps({"helpfulness": {"score": 1, "reason": "r"}, "clarity": {"score": '"', "reason": "r"}})
    out = parse_scores(text, A)
    assert out["helpfulness"]["score"] == 1 and out["clarity"]["score"] is None
