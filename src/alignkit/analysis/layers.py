"""Where in the network a shift arises (pure): the logit lens of both models at chosen answer positions.

At each chosen position and layer, the lens distribution is the output head over the residual stream after
that layer (through the final norm); at the last layer it is the model's own next-token distribution. Per
position this module keeps, per layer, the rank and probability of the answer's token in the base's and the
aligned model's lens, the KL between the two lens distributions, and the first layer at which each lens puts the
token on top. Which positions: every shifted and marginal one, the first answer positions, and as a control an
equally large seeded sample of the unshifted ones (:func:`choose_positions`).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from alignkit.analysis.tokens import token_class
from alignkit.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

FIRST = 5  # the first answer positions are always read (the activation-difference lens' "first" view)
#: what ``layers=True`` reads (Python API): every 4th layer and the last -- measured at 1.84x the plain analysis
DEFAULT_LAYERS = "every:4"


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """``all``, ``every:N`` (every N-th layer, and always the last) or a comma list of 1-based layers."""
    spec = spec.strip()
    if spec == "all":
        return list(range(1, n_layers + 1))
    if spec.startswith("every:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"--layers {spec!r}: every:N needs a whole number N >= 1")
        return sorted(set(range(n, n_layers + 1, n)) | {n_layers})
    try:
        chosen = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        chosen = []
    if not chosen:
        raise InputError(f"--layers {spec!r}: give all, every:N, or a comma list of layers such as 6,12,18")
    bad = [x for x in chosen if not 1 <= x <= n_layers]
    if bad:
        raise InputError(f"--layers {spec!r}: layer {bad[0]} does not exist; the models have layers 1..{n_layers}")
    return chosen


def choose_positions(positions: list[dict[str, Any]], key: str, seed: int) -> list[int]:
    """The answer positions to read layer by layer: every shifted and marginal one, the first :data:`FIRST`,
    and a control sample of the other unshifted ones as large as the shifted + marginal set (seeded by ``seed``
    and the answer's ``key``, so it does not depend on batching or resuming)."""
    moved = [p["t"] for p in positions if p["category"] != "unshifted"]
    first = [p["t"] for p in positions[:FIRST]]
    rest = [p["t"] for p in positions if p["category"] == "unshifted" and p["t"] >= FIRST]
    control = random.Random(f"{seed}:{key}").sample(rest, min(len(moved), len(rest)))
    return sorted(set(moved) | set(first) | set(control))


def lens_values(aligned: torch.Tensor, base: torch.Tensor, targets: torch.Tensor,
                layers: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per position, the per-layer values of the two lenses (``[n, L, V]`` log-probabilities each)."""
    import torch

    ta = aligned.gather(2, targets[:, None, None].expand(-1, aligned.shape[1], 1)).squeeze(2)  # [n, L]
    tb = base.gather(2, targets[:, None, None].expand(-1, base.shape[1], 1)).squeeze(2)
    rank_a = (aligned > ta[..., None]).sum(-1)
    rank_b = (base > tb[..., None]).sum(-1)
    kl = (aligned.exp() * (aligned - base)).sum(-1).clamp_min(0.0)  # KL(aligned lens || base lens)
    out = []
    for i in range(targets.shape[0]):
        ra, rb = rank_a[i].tolist(), rank_b[i].tolist()
        out.append({
            "layers": list(layers),
            "base_rank": rb, "aligned_rank": ra,
            "p_base": [round(x, 6) for x in torch.exp(tb[i]).tolist()],
            "p_aligned": [round(x, 6) for x in torch.exp(ta[i]).tolist()],
            "kl": [round(x, 6) for x in kl[i].tolist()],
            "first_top1_base": next((layer for layer, r in zip(layers, rb) if r == 0), None),
            "first_top1_aligned": next((layer for layer, r in zip(layers, ra) if r == 0), None),
        })
    return out


def top_tokens(logprobs: torch.Tensor, token_text: Any, k: int = 8) -> list[str]:
    """The ``k`` most likely tokens of a ``[V]`` read-out, as text."""
    return [token_text(int(t)) for t in logprobs.topk(k).indices.tolist()]


def layer_summary(answers: list[dict[str, Any]], *, top: int = 10) -> dict[str, Any] | None:
    """By layer, over the positions read: the share whose answer token is top-1 in the base's and in the aligned
    model's lens, the mean KL between the two lenses and the mean first top-1 layer -- split by shift class and by
    token class (the rule of ``analysis/tokens.py``); and the activation-difference lens' most frequent top
    tokens per layer over the answers (their first positions, their shifted positions). None without lens data."""
    read = [p for a in answers for p in a["positions"] if p.get("lens")]
    if not read:
        return None
    layers = read[0]["lens"]["layers"]

    def view(ps: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(ps)

        def mean(key: str, fn: Any) -> list[float]:
            return [round(sum(fn(p["lens"][key][j]) for p in ps) / n, 4) for j in range(len(layers))]

        firsts = {side: [p["lens"][f"first_top1_{side}"] for p in ps] for side in ("base", "aligned")}
        return {
            "positions": n,
            "base_top1": mean("base_rank", lambda r: r == 0),
            "aligned_top1": mean("aligned_rank", lambda r: r == 0),
            "mean_kl": mean("kl", float),
            **{f"mean_first_top1_{side}": (round(sum(x for x in f if x is not None) / sum(x is not None for x in f), 2)
                                           if any(x is not None for x in f) else None)
               for side, f in firsts.items()},
            **{f"never_top1_{side}": round(sum(x is None for x in f) / n, 4) for side, f in firsts.items()},
        }

    by_shift: dict[str, list] = defaultdict(list)
    by_token: dict[str, list] = defaultdict(list)
    for p in read:
        by_shift[p["category"]].append(p)
        by_token[token_class(p["token"])].append(p)
    difference: dict[str, dict[str, list]] = {}
    for group in ("first", "shifted"):
        per_layer: dict[str, Counter] = defaultdict(Counter)
        for a in answers:
            for layer, toks in (a.get("difference_lens") or {}).get(group, {}).items():
                per_layer[layer].update(toks)
        if per_layer:
            difference[group] = {layer: c.most_common(top) for layer, c in per_layer.items()}
    return {
        "layers": layers,
        "all": view(read),
        "by_shift_class": {c: view(ps) for c, ps in sorted(by_shift.items())},
        "by_token_class": {c: view(ps) for c, ps in sorted(by_token.items())},
        "difference_lens": difference,
    }
