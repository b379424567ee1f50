"""The stated style/content rule of the shift analysis, and its shares in the summary."""

from __future__ import annotations

import pytest

from alignkit.analysis.aggregate import summarize
from alignkit.analysis.tokens import class_shares, token_class


@pytest.mark.parametrize("token, cls", [
    ("\n\n", "markup"), (" **", "markup"), ("-", "markup"), ("1.", "markup"), (" 2)", "markup"), (":", "markup"),
    ("▁", "markup"), ("Here", "function"), (" However", "function"), (" the", "function"), ("▁Thank", "function"),
    (" sorry", "function"), ("Ġplease", "function"), (" short", "function"), ("You", "function"),
    (" water", "content"), ("athers", "content"), ("Leonardo", "content"), (" boiling", "content"), ("42", "content"),
])
def test_token_class_follows_the_stated_rule(token, cls):
    assert token_class(token) == cls


def test_class_shares_and_the_summary_split():
    assert class_shares([]) == {"markup": 0.0, "function": 0.0, "content": 0.0, "positions": 0}
    toks = [("Here", "shifted"), (" **", "shifted"), (" water", "shifted"), (" the", "unshifted"),
            (" water", "unshifted"), ("\n", "marginal"), (" boil", "unshifted"), (" it", "unshifted")]
    positions = [{"t": i, "token": t, "category": c, "kl": 0.1, "kl_base_aligned": 0.1, "base_rank": 0 if c ==
                  "unshifted" else 5, "p_base": 0.5, "aligned_rank": 0} for i, (t, c) in enumerate(toks)]
    s = summarize([{"aligned": "m", "mode": "exact", "positions": positions}])["m"]["token_classes"]
    assert s["shifted"] == {"markup": 1 / 3, "function": 1 / 3, "content": 1 / 3, "positions": 3}
    assert s["all"] == {"markup": 2 / 8, "function": 3 / 8, "content": 3 / 8, "positions": 8}
