"""Per-position shift metrics (pure functions).

At answer position t with answer token o_t, P_A is the aligned model's next-token distribution and P_B the
base model's, given the same answer prefix. Exact mode uses the full vocabulary; approximate mode uses
only the top-k log-probabilities an API returns (rank beyond k is reported as ``k`` with
``rank_exact=False``; KL is computed over the tokens both top-k lists share plus one tail bucket, which
is a lower bound of the true KL by the data-processing inequality).

Categories follow Re-Align: **unshifted** (o_t is the base's top token), **marginal** (base rank 1-2),
**shifted** (base rank >= 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

CATEGORIES = ("unshifted", "marginal", "shifted")


def category(rank: int) -> str:
    return "unshifted" if rank == 0 else "marginal" if rank <= 2 else "shifted"


def exact_positions(lp_a, lp_b, targets, *, top_k: int, token_text: Callable[[int], str], start: int = 0) -> list[dict[str, Any]]:
    """Metrics for a chunk of positions from full-vocabulary log-probs ``[n, V]`` of both models."""
    import torch

    tgt = targets.unsqueeze(1)
    la_t = lp_a.gather(1, tgt).squeeze(1)
    lb_t = lp_b.gather(1, tgt).squeeze(1)
    rank_b = (lp_b > lb_t.unsqueeze(1)).sum(1)
    rank_a = (lp_a > la_t.unsqueeze(1)).sum(1)
    pa, pb = lp_a.exp(), lp_b.exp()
    kl = torch.where(pa > 0, pa * (lp_a - lp_b), torch.zeros_like(pa)).sum(1).clamp(min=0)
    h_a = -torch.where(pa > 0, pa * lp_a, torch.zeros_like(pa)).sum(1)
    h_b = -torch.where(pb > 0, pb * lp_b, torch.zeros_like(pb)).sum(1)
    ta_v, ta_i = lp_a.topk(top_k, dim=-1)
    tb_v, tb_i = lp_b.topk(top_k, dim=-1)
    out = []
    cols = [x.tolist() for x in (targets, rank_b, rank_a, lb_t, la_t, kl, h_a, h_b, ta_v, ta_i, tb_v, tb_i)]
    for i, (tok, rb, ra, lb, la, k, ha, hb, tav, tai, tbv, tbi) in enumerate(zip(*cols)):
        out.append({
            "t": start + i, "id": tok, "token": token_text(tok), "base_rank": rb, "aligned_rank": ra,
            "rank_exact": True, "p_base": math.exp(lb), "p_aligned": math.exp(la), "kl": k,
            "h_aligned": ha, "h_base": hb, "category": category(rb),
            "top_base": [[token_text(j), math.exp(v)] for v, j in zip(tbv, tbi)],
            "top_aligned": [[token_text(j), math.exp(v)] for v, j in zip(tav, tai)],
        })
    return out


def approx_position(
    t: int, token: str, lp_a: float, lp_b: float | None,
    top_a: Sequence[tuple[str, float]], top_b: Sequence[tuple[str, float]],
) -> dict[str, Any]:
    """Metrics at one position from top-k ``(token, logprob)`` lists (approximate mode)."""
    k = len(top_b)
    order_b = [tok for tok, _ in sorted(top_b, key=lambda kv: -kv[1])]
    if token in order_b:
        rank, exact = order_b.index(token), True
    else:
        rank, exact = k, False  # somewhere beyond the top-k
    pa = {tok: math.exp(v) for tok, v in top_a}
    pb = {tok: math.exp(v) for tok, v in top_b}
    shared = [tok for tok in pa if tok in pb]
    kl = sum(pa[tok] * math.log(pa[tok] / pb[tok]) for tok in shared if pa[tok] > 0)
    tail_a = max(0.0, 1.0 - sum(pa[tok] for tok in shared))
    tail_b = max(0.0, 1.0 - sum(pb[tok] for tok in shared))
    if tail_a > 1e-12:
        kl += tail_a * math.log(tail_a / max(tail_b, 1e-12))
    # what the top-k lists say about the entropies (the tail counted as one outcome: a lower bound)
    def h(ps: dict[str, float]) -> float:
        rest = max(0.0, 1.0 - sum(ps.values()))
        return -sum(p * math.log(p) for p in [*ps.values(), rest] if p > 0)

    return {
        "t": t, "id": None, "token": token, "base_rank": rank, "aligned_rank": None, "rank_exact": exact,
        "p_base": math.exp(lp_b) if lp_b is not None else None, "p_aligned": math.exp(lp_a), "kl": max(kl, 0.0),
        "h_aligned": h(pa), "h_base": h(pb), "category": category(rank),
        "top_base": [[tok, math.exp(v)] for tok, v in sorted(top_b, key=lambda kv: -kv[1])],
        "top_aligned": [[tok, math.exp(v)] for tok, v in sorted(top_a, key=lambda kv: -kv[1])],
    }
