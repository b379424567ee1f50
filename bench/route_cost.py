"""The added cost of each route stage, measured side by side in one run on the embedded Gemma-3-270m: the base
under URIAL alone; with a BPO rewriter in front; with an Aligner corrector behind; with both. The rewriter and
the corrector are the same base model in alignkit's stage layouts (prompted in context, so every stage's
prompt starts with the same URIAL preamble): one copy of the weights serves all three stages, and the
preamble's key/values are computed once and reused by every stage (prefix-store hits are counted).

Per route: seconds per request (a batch of 8 instructions, greedy, at most N new tokens per stage), tokens of
all stages, the ratio to URIAL alone, and the prefix-store hits. Writes docs/results/route_cost.json.

    python bench/route_cost.py [--n 8] [--max-new-tokens 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_result  # noqa: E402

INSTRUCTIONS = [
    "How do I keep basil alive on a windowsill?", "Explain what a leap year is.",
    "Give me two tips for a job interview.", "Why do onions make you cry?",
    "What is the difference between weather and climate?", "How do I make cold brew coffee?",
    "Suggest a name for a grey cat.", "What does a thermostat do?",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2, help="best of N runs per route")
    args = ap.parse_args(argv)

    from alignkit import GenerationConfig
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.methods.routes import usage
    from alignkit.models.registry import ModelPool

    pool = ModelPool()
    base = pool(args.model)
    prompts = (INSTRUCTIONS * ((args.n + len(INSTRUCTIONS) - 1) // len(INSTRUCTIONS)))[: args.n]
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, repetition_penalty=1.15)
    routes = {"urial": {}, "bpo > urial": {"rewriter": args.model}, "urial > aligner": {"corrector": args.model},
              "bpo > urial > aligner": {"rewriter": args.model, "corrector": args.model}}
    out = {"model": args.model, "requests": len(prompts), "max_new_tokens_per_stage": args.max_new_tokens,
           "repeats": args.repeats, "routes": {}}
    # the rewrite stage's own decoding budget follows the bench's, so every stage generates at most N tokens
    for name, extra in routes.items():
        model = apply_method(base, MethodOptions(method="urial", **extra), pool)
        if hasattr(model, "upstream") and hasattr(model.upstream, "layout"):
            model.upstream.layout.decoding["max_new_tokens"] = args.max_new_tokens
        if hasattr(model, "layout") and model.method == "bpo":
            model.layout.decoding["max_new_tokens"] = args.max_new_tokens
        store = base.engine.store
        best, comps = float("inf"), []
        hits0, misses0 = store.hits, store.misses
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            comps = model.generate(prompts, cfg)
            best = min(best, time.perf_counter() - t0)
        tokens = [usage(c) for c in comps]
        out["routes"][name] = {
            "seconds_per_request": round(best / len(prompts), 3),
            "tokens_all_stages_per_request": round(sum(t["prompt_tokens"] + t["completion_tokens"] for t in tokens)
                                                   / len(prompts), 1),
            "generated_tokens_per_request": round(sum(t["completion_tokens"] for t in tokens) / len(prompts), 1),
            "prefix_store_hits": store.hits - hits0, "prefix_store_misses": store.misses - misses0,
        }
        print(json.dumps({name: out["routes"][name]}), file=sys.stderr)
    alone = out["routes"]["urial"]["seconds_per_request"]
    for r in out["routes"].values():
        r["ratio_to_urial_alone"] = round(r["seconds_per_request"] / alone, 2)
    print(json.dumps(out, indent=2))
    write_result("route_cost", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
