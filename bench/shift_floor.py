"""The exact token-shift analysis against its floor, side by side in one run, on the embedded Gemma-3-270m.

* floor: what any exact analysis must compute -- the two models' bare forward passes over the same token
  batches (decoder over prompt + answer, the output head over the answer positions, same dtype, same chunks);
* exact (alignkit's ``ShiftAnalyzer``): the same passes plus, per position, both full-vocabulary
  distributions' base and aligned ranks, probabilities, KL, entropies and top-k.

Same answers (``--answers`` of ``--tokens`` tokens, batch 4), fp32, best of ``--repeats``; the ratio exact / floor
is the analysis' overhead (target: at most 1.3).

    python bench/shift_floor.py [--tokens 256] [--answers 8] [--repeats 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import time

from _results import write_result  # bench/_results.py: docs/results/NAME.json
from shift_speed import _setup


def head_chunks(model, prompts, answers, batch_size: int):
    """The two bare forward passes' work for one model, chunk by chunk: the decoder over each batch, then the
    output head over the answer positions -> (answer index, logits [n, V], target ids [n])."""
    import torch

    hf = model.base if hasattr(model, "base") else model
    pairs = hf._pairs(prompts, answers)
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            hidden = hf._batch_hidden(batch)
            for row, (p, c) in enumerate(batch):
                for a in range(0, len(c), hf.score_chunk):
                    b = min(a + hf.score_chunk, len(c))
                    logits = hf._head(hidden[row, len(p) - 1 + a : len(p) - 1 + b])
                    yield start + row, logits, torch.tensor(c[a:b], device=logits.device)


def floor_pass(model, prompts, answers, batch_size: int) -> int:
    return sum(logits.shape[0] for _, logits, _ in head_chunks(model, prompts, answers, batch_size))


def reference(base, aligned, bprompts, aprompts, answers, batch_size: int) -> tuple[list[list[int]], list[list[float]]]:
    """Base ranks and KL(aligned || base) written the plain way, as the exact mode computed them before this
    benchmark: log-softmax over 64-row blocks, every rank a full-vocabulary comparison, KL with masks (untimed)."""
    import torch

    ranks: list[list[int]] = [[] for _ in answers]
    kls: list[list[float]] = [[] for _ in answers]
    for (i, zb, t), (_, za, _) in zip(head_chunks(base, bprompts, answers, batch_size),
                                      head_chunks(aligned, aprompts, answers, batch_size)):
        lb, la = zb.log_softmax(-1), za.log_softmax(-1)
        ranks[i] += (lb > lb.gather(1, t[:, None])).sum(1).tolist()
        pa = la.exp()
        kls[i] += torch.where(pa > 0, pa * (la - lb), torch.zeros_like(pa)).sum(1).clamp(min=0).tolist()
    return ranks, kls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--answers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import torch

    from alignkit.analysis.shift import base_prompt

    base, aligned, an, items = _setup(args.tokens, args.answers)
    bs = an.options.batch_size
    bprompts = [base_prompt("plain", it.instruction) for it in items]
    aprompts = [it.instruction for it in items]
    answers = [it.answer_ids for it in items]
    floor_pass(base, bprompts[:1], answers[:1], bs)  # warm-up
    floors, exacts, ranks = [], [], None
    for _ in range(args.repeats):
        t = time.perf_counter()
        floor_pass(base, bprompts, answers, bs)
        floor_pass(aligned, aprompts, answers, bs)
        floors.append(time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            recs = list(an.analyse(items))
        exacts.append(time.perf_counter() - t)
        ranks = [[p["base_rank"] for p in r["positions"]] for r in recs]
    floor, exact = min(floors), min(exacts)
    ref_ranks, ref_kls = reference(base, aligned, bprompts, aprompts, answers, bs)
    kls = [[p["kl"] for p in r["positions"]] for r in recs]
    kl_err = max(abs(x - y) / max(y, 1e-6) for a, b in zip(kls, ref_kls) for x, y in zip(a, b))
    result = {"model": "gemma-3-270m", "tokens": args.tokens, "answers": args.answers, "batch_size": bs,
              "dtype": "float32", "threads": torch.get_num_threads(),
              "per_answer_seconds": {"floor": round(floor / args.answers, 3), "exact": round(exact / args.answers, 3)},
              "ratio_exact_to_floor": round(exact / floor, 3), "target": 1.3,
              "positions": sum(len(r) for r in ranks), "identical_base_ranks": ranks == ref_ranks,
              "kl_max_relative_difference": float(f"{kl_err:.3g}"), "first_answer_base_ranks": ranks[0]}
    print(f"per answer at T={args.tokens}: floor {floor / args.answers:.3f} s, exact {exact / args.answers:.3f} s "
          f"-> {exact / floor:.2f}x the floor (target <= 1.3); base ranks identical to the plain computation: "
          f"{ranks == ref_ranks}; KL within {kl_err:.2g} (relative)")
    write_result("shift_floor", result, path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
