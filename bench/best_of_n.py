"""Best-of-N cost and scorer throughput on the embedded Gemma-3-270m, measured side by side in one run.

* **best-of-N vs N single generations**: URIAL (K=3) answers to P instructions, N samples each (temperature 0.8,
  fixed seeds). Best-of-N generates the N samples of all P prompts as rows of one batch (the shared URIAL prefix
  is computed once) and rates them; the baseline generates the same N x P samples one request at a time (the
  same seeds, so the very same texts -- checked). Printed: the ratio of their wall times, and the share of
  best-of-N's time spent rating.
* **scorer throughput**: answers rated per second by a reward model (a score head on Gemma; a trained one with
  ``--reward runs/rewarded/rm``, else a fresh head, which costs the same) and by a G-Eval judge (Gemma, one
  forward pass per answer), on the same answers.

    python bench/best_of_n.py [--prompts 6] [--n 4] [--new-tokens 64] [--reward runs/rewarded/rm]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _results import write_result  # bench/_results.py: docs/results/NAME.json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reward", default=None, help="reward model folder (default: a fresh score head on Gemma)")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--json", default=None, help="also write the result here (default docs/results/best_of_n.json)")
    args = ap.parse_args(argv)

    from alignkit import GenerationConfig
    from alignkit.api import open_scorer
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.methods.best_of_n import BestOfN
    from alignkit.models.registry import ModelPool
    from alignkit.training.reward_model import RewardModelScorer

    held = [json.loads(x)["prompt"] for x in (Path(__file__).parent.parent / "examples" / "heldout-20.jsonl")
            .read_text().splitlines()][: args.prompts]
    pool = ModelPool()
    base = pool(args.model)
    urial = apply_method(base, MethodOptions(method="urial", template="urial-k3"))
    if args.reward:
        reward = open_scorer(f"reward:{args.reward}")
    else:  # the cost of a reward model does not depend on its head's weights
        from alignkit.training.reward import load_for_reward

        model, tok, _ = load_for_reward(args.model)
        from alignkit.training.reward_model import reward_layout_for

        reward = RewardModelScorer(model.eval(), tok, reward_layout_for(tok, "urial"), spec="reward:(fresh head)")
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, temperature=0.8, seed=11, repetition_penalty=1.15)
    urial.generate(held[:1], GenerationConfig(max_new_tokens=4))  # warm-up: load, prefix store

    t0 = time.perf_counter()
    best = BestOfN(urial, reward, args.n).generate(held, cfg)
    t_bon = time.perf_counter() - t0
    cands = [c["text"] for b in best for c in b.meta["best_of_n"]["candidates"]]
    t0 = time.perf_counter()
    reward.score([p for p in held for _ in range(args.n)], cands)
    t_rate = time.perf_counter() - t0

    t0 = time.perf_counter()
    singles = []
    for p in held:
        for j in range(args.n):
            from dataclasses import replace

            singles.append(urial.generate([p], replace(cfg, seed=cfg.seed + j))[0].text)
    t_single = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(cands, singles))
    tokens = sum(c["completion_tokens"] for b in best for c in b.meta["best_of_n"]["candidates"])

    geval = open_scorer(f"geval:{args.model}", pool)
    answers = [b.text for b in best]
    geval.score(held[:1], answers[:1])
    t0 = time.perf_counter()
    gscores = geval.score(held, answers)
    t_geval = time.perf_counter() - t0
    t0 = time.perf_counter()
    reward.score(held, answers)
    t_reward = time.perf_counter() - t0

    result = {
        "model": args.model, "method": "urial (urial-k3)", "prompts": len(held), "n": args.n,
        "max_new_tokens": args.new_tokens, "candidate_tokens": tokens,
        "best_of_n_seconds": round(t_bon, 2), "of_which_rating_seconds": round(t_rate, 2),
        "n_single_generations_seconds": round(t_single, 2),
        "speedup_vs_single": round(t_single / t_bon, 2),
        "candidates_equal_to_single_generations": f"{same}/{len(cands)}",
        "scorer_answers_per_second": {"reward": round(len(answers) / t_reward, 2),
                                      "geval": round(len(answers) / t_geval, 2)},
        "geval_unrated": sum(s.value is None for s in gscores),
        "reward_model": reward.spec,
    }
    print(f"best-of-{args.n} on {len(held)} prompts: {t_bon:.1f} s (rating {t_rate:.1f} s) vs {args.n} x "
          f"{len(held)} single generations {t_single:.1f} s -> {t_single / t_bon:.2f}x; candidates equal to the "
          f"single generations: {same}/{len(cands)}")
    print(f"scorer throughput: reward model {len(answers) / t_reward:.1f} answers/s, G-Eval judge "
          f"{len(answers) / t_geval:.1f} answers/s")
    write_result("best_of_n", result, path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
