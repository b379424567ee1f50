"""Aggregates over analysed answers (pure): category shares, KL, curves over position, frequent shifted
tokens, and the same split by instruction category -- per aligned model."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from alignkit.analysis.layers import layer_summary
from alignkit.analysis.metrics import CATEGORIES
from alignkit.analysis.tokens import class_shares

RANK_CAP = 1000  # mean-rank curves cap each rank, so one token ranked 200,000th does not drown a curve
PAPER_RANK_CAP = 50  # Re-Align's cap: its claim "mean base rank below 5 after the first positions" is read on it


def _shares(positions: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(positions)
    counts = Counter(p["category"] for p in positions)
    out: dict[str, Any] = {c: (counts[c] / n if n else 0.0) for c in CATEGORIES}
    out["positions"] = n
    out["mean_kl"] = sum(p["kl"] for p in positions) / n if n else 0.0  # KL(aligned || base)
    rev = [p["kl_base_aligned"] for p in positions if p.get("kl_base_aligned") is not None]
    out["mean_kl_base_aligned"] = sum(rev) / len(rev) if rev else None  # KL(base || aligned)
    rel = [p["kl_released"] for p in positions if p.get("kl_released") is not None]
    out["mean_kl_released"] = sum(rel) / len(rel) if rel else None  # the released code's top-k KL, when asked
    for k in (1, 3, 5):
        out[f"base_top{k}"] = sum(p["base_rank"] < k for p in positions) / n if n else 0.0
    pb = [p["p_base"] for p in positions if p["p_base"] is not None]
    out["mean_p_base"] = sum(pb) / len(pb) if pb else None
    ar = [p["aligned_rank"] for p in positions if p.get("aligned_rank") is not None]
    # sanity: for greedy answers of the aligned model this is ~1 (re-tokenised text can lower it a little)
    out["aligned_top1"] = sum(r == 0 for r in ar) / len(ar) if ar else None
    return out


def _curves(answers: list[dict[str, Any]], min_count: int) -> dict[str, list]:
    by_t: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for a in answers:
        for p in a["positions"]:
            by_t[p["t"]].append(p)
    ts = [t for t in sorted(by_t) if len(by_t[t]) >= min_count]
    return {
        "t": ts,
        "count": [len(by_t[t]) for t in ts],
        "mean_kl": [sum(p["kl"] for p in by_t[t]) / len(by_t[t]) for t in ts],
        "mean_p_base": [sum(p["p_base"] or 0.0 for p in by_t[t]) / len(by_t[t]) for t in ts],
        "mean_base_rank": [sum(min(p["base_rank"], RANK_CAP) for p in by_t[t]) / len(by_t[t]) for t in ts],
        "mean_base_rank_cap50": [sum(min(p["base_rank"], PAPER_RANK_CAP) for p in by_t[t]) / len(by_t[t]) for t in ts],
        "median_base_rank": [statistics.median(p["base_rank"] for p in by_t[t]) for t in ts],
        "shifted": [sum(p["category"] == "shifted" for p in by_t[t]) / len(by_t[t]) for t in ts],
    }


def summarize(records: Iterable[dict[str, Any]], *, top_tokens: int = 30, min_count: int = 3) -> dict[str, Any]:
    """Summary per aligned model (records carry ``aligned`` labels), with shares, curves and tokens."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["aligned"]].append(r)
    out: dict[str, Any] = {}
    for label, answers in groups.items():
        positions = [p for a in answers for p in a["positions"]]
        shifted = Counter(p["token"] for p in positions if p["category"] == "shifted")
        by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for a in answers:
            if a.get("category"):
                by_cat[str(a["category"])].extend(a["positions"])
        early = [p for a in answers for p in a["positions"] if p["t"] < max(1, len(a["positions"]) // 5)]
        out[label] = {
            "answers": len(answers),
            "mode": sorted({a["mode"] for a in answers}),
            **_shares(positions),
            "shifted_in_first_fifth": (sum(p["category"] == "shifted" for p in early) / len(early)) if early else 0.0,
            "top_shifted_tokens": shifted.most_common(top_tokens),
            # style or content, by the stated rule of analysis/tokens.py: among the shifted positions, and among
            # all positions (the base rate the shifted share is read against)
            "token_classes": {
                "shifted": class_shares([p["token"] for p in positions if p["category"] == "shifted"]),
                "all": class_shares([p["token"] for p in positions]),
            },
            "by_category": {c: _shares(ps) for c, ps in sorted(by_cat.items())},
            "curves": _curves(answers, min_count),
        }
        layers = layer_summary(answers)
        if layers is not None:  # shift --layers: where in the network the shift arises
            out[label]["layers"] = layers
    return out
