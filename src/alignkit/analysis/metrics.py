"""Per-position shift metrics (pure functions).

At answer position t with answer token o_t, P_A is the aligned model's next-token distribution and P_B the
base model's, given the same answer prefix. Exact mode uses the full vocabulary; approximate mode uses
only the top-k log-probabilities an API returns (rank beyond k is reported as ``k`` with
``rank_exact=False``; KL is computed over the tokens both top-k lists share plus one tail bucket, which
is a lower bound of the true KL by the data-processing inequality).

Both directions of the KL are reported, labelled: ``kl`` is KL(P_A || P_B) (aligned relative to base: what the
aligned model's choices cost under the base), ``kl_base_aligned`` is KL(P_B || P_A), the direction the Re-Align
authors' released analysis code computes (there over a renormalised shared top-50; here over the full
vocabulary in exact mode).

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


def exact_positions(lp_a, lp_b, targets, *, top_k: int, token_text: Callable[[int], str], start: int = 0,
                    released_k: int = 0) -> list[dict[str, Any]]:
    """Metrics for a chunk of positions from full-vocabulary log-probs ``[n, V]`` of both models (see
    :func:`exact_reduce` and :func:`exact_rows`, its two halves)."""
    return exact_rows(exact_reduce(lp_a, lp_b, targets, top_k=top_k, released_k=released_k), token_text, start)


def exact_reduce(lp_a, lp_b, targets, *, top_k: int, released_k: int = 0) -> tuple[Any, ...]:
    """The full-vocabulary reductions of a chunk of positions, as tensors on the log-probs' device: nothing is read
    back, so on a GPU they run while the caller turns the previous chunk into rows (:func:`exact_rows`).

    Each full-vocabulary pass is done once: one top-k per model (which also gives the ranks of all but the rare
    far-ranked targets, see :func:`_rank`), one ``exp`` per model, the products summed in place, no masks --
    ``p * log p`` is 0 where ``p`` underflows to 0 as long as ``log p`` is finite; the rows where a model gives a
    token ``-inf`` (a masked vocabulary) come out NaN here and are recomputed with the guarded form by
    :func:`exact_rows`."""
    tgt = targets.unsqueeze(1)
    la_t = lp_a.gather(1, tgt)
    lb_t = lp_b.gather(1, tgt)
    wide = min(max(top_k, RANK_WINDOW, released_k), lp_a.shape[1])
    ta_v, ta_i = lp_a.topk(wide, dim=-1)
    tb_v, tb_i = lp_b.topk(wide, dim=-1)
    rank_a = _rank(lp_a, la_t, ta_v)
    rank_b = _rank(lp_b, lb_t, tb_v)
    released = _released_kl(ta_v[:, :released_k], ta_i[:, :released_k], tb_v[:, :released_k],
                            tb_i[:, :released_k]) if released_k else None
    ta_v, ta_i, tb_v, tb_i = ta_v[:, :top_k], ta_i[:, :top_k], tb_v[:, :top_k], tb_i[:, :top_k]
    pa = lp_a.exp()
    h_a = -(pa * lp_a).sum(1)
    d = lp_a - lp_b
    d.mul_(pa)
    kl = d.sum(1)
    del d
    pb = lp_b.exp()
    d = lp_b - lp_a
    d.mul_(pb)
    kl_ba = d.sum(1)
    del d
    pb.mul_(lp_b)
    h_b = -pb.sum(1)
    del pb
    cols = [targets, rank_b, rank_a, lb_t.squeeze(1), la_t.squeeze(1), kl, kl_ba, h_a, h_b, ta_v, ta_i, tb_v, tb_i]
    if released is not None:
        cols.append(released)
    done = None
    if lp_a.device.type == "cuda":  # read back without waiting: the copies queue behind the kernels above
        import torch

        cols = [c.to("cpu", non_blocking=True) for c in cols]
        done = torch.cuda.Event()
        done.record()
    return lp_a, lp_b, cols, done


def exact_rows(reduced: tuple[Any, ...], token_text: Callable[[int], str], start: int = 0) -> list[dict[str, Any]]:
    """One record per position from :func:`exact_reduce`'s tensors (read back here)."""
    import torch

    lp_a, lp_b, cols_t, done = reduced
    if done is not None:
        done.synchronize()
    kl, kl_ba, h_a, h_b = cols_t[5:9]
    bad = torch.isnan(kl) | torch.isnan(kl_ba) | torch.isnan(h_a) | torch.isnan(h_b)
    if bool(bad.any()):  # -inf log-probs: 0 * -inf; the guarded form for those rows only
        rows = bad.nonzero().squeeze(1)
        ra, rb = lp_a[rows.to(lp_a.device)], lp_b[rows.to(lp_b.device)]
        qa, qb = ra.exp(), rb.exp()
        zero = torch.zeros((), dtype=ra.dtype, device=ra.device)
        kl[rows] = torch.where(qa > 0, qa * (ra - rb), zero).sum(1).to(kl.device)
        kl_ba[rows] = torch.where(qb > 0, qb * (rb - ra), zero).sum(1).to(kl.device)
        h_a[rows] = -torch.where(qa > 0, qa * ra, zero).sum(1).to(kl.device)
        h_b[rows] = -torch.where(qb > 0, qb * rb, zero).sum(1).to(kl.device)
    released = cols_t[13].tolist() if len(cols_t) > 13 else None  # exact_reduce appends it when asked
    cols_t = [*cols_t[:5], kl.clamp(min=0), kl_ba.clamp(min=0), *cols_t[7:13]]
    out = []
    cols = [x.tolist() for x in cols_t]
    for i, (tok, rb_, ra_, lb, la, k, kr, ha, hb, tav, tai, tbv, tbi) in enumerate(zip(*cols)):
        out.append({
            "t": start + i, "id": tok, "token": token_text(tok), "base_rank": rb_, "aligned_rank": ra_,
            "rank_exact": True, "p_base": math.exp(lb), "p_aligned": math.exp(la), "kl": k, "kl_base_aligned": kr,
            "h_aligned": ha, "h_base": hb, "category": category(rb_),
            "top_base": [[token_text(j), math.exp(v)] for v, j in zip(tbv, tbi)],
            "top_aligned": [[token_text(j), math.exp(v)] for v, j in zip(tav, tai)],
        })
        if released is not None:
            out[-1]["kl_released"] = released[i]
    return out


def _released_kl(va, ia, vb, ib):
    """KL(base || aligned) as the Re-Align authors' released analysis computes it: each model's top-k
    probabilities renormalised over its own top-k, summed over the tokens both top-k lists share."""
    import torch

    la, lb = va.log_softmax(-1), vb.log_softmax(-1)
    shared = ib.unsqueeze(2) == ia.unsqueeze(1)  # [n, k_base, k_aligned]: the same token in both lists
    terms = lb.exp().unsqueeze(2) * (lb.unsqueeze(2) - la.unsqueeze(1))
    return torch.where(shared, terms, torch.zeros((), dtype=terms.dtype)).sum((1, 2))


#: ranks below this come from the top-k pass itself; a row whose token ranks lower is counted over the vocabulary
RANK_WINDOW = 16


def _rank(lp, lp_t, top_v):
    """How many tokens each row gives a higher log-probability than its target: exact. Every token outside the
    row's top ``w`` is at most the w-th value, so when that value is not above the target's, the count over the
    top ``w`` is the count over the vocabulary; only the other rows (targets ranked w or lower) are compared in
    full."""
    import torch

    rank = torch.count_nonzero(top_v > lp_t, dim=1)
    far = (top_v[:, -1:] > lp_t).squeeze(1).nonzero().squeeze(1)
    if far.numel():
        rank[far] = torch.count_nonzero(lp[far] > lp_t[far], dim=1)
    return rank


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
    kl_ba = sum(pb[tok] * math.log(pb[tok] / pa[tok]) for tok in shared if pb[tok] > 0)
    if tail_b > 1e-12:
        kl_ba += tail_b * math.log(tail_b / max(tail_a, 1e-12))
    # what the top-k lists say about the entropies (the tail counted as one outcome: a lower bound)
    def h(ps: dict[str, float]) -> float:
        rest = max(0.0, 1.0 - sum(ps.values()))
        return -sum(p * math.log(p) for p in [*ps.values(), rest] if p > 0)

    return {
        "t": t, "id": None, "token": token, "base_rank": rank, "aligned_rank": None, "rank_exact": exact,
        "p_base": math.exp(lp_b) if lp_b is not None else None, "p_aligned": math.exp(lp_a), "kl": max(kl, 0.0),
        "kl_base_aligned": max(kl_ba, 0.0),
        "h_aligned": h(pa), "h_base": h(pb), "category": category(rank),
        "top_base": [[tok, math.exp(v)] for tok, v in sorted(top_b, key=lambda kv: -kv[1])],
        "top_aligned": [[tok, math.exp(v)] for tok, v in sorted(top_a, key=lambda kv: -kv[1])],
    }
