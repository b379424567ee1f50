"""Batch in-context alignment on the embedded Gemma-3-270m: the shared preamble (K=3 examples, ~900
tokens) computed once and reused, vs recomputed inside every request. Same 16 instructions, greedy, the
same outputs both ways (checked); prints the times and the ratio.

    python bench/urial_throughput.py [--new-tokens 64] [--template urial-k3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _results import write_result  # bench/_results.py: docs/results/NAME.json
from urial_selfstop import INSTRUCTIONS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--template", default=None)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args(argv)

    from alignkit import GenerationConfig, load_model
    from alignkit.methods import MethodOptions, apply_method

    base = load_model(args.model)
    model = apply_method(base, MethodOptions(method="urial", template=args.template))
    queries = [q for _, q in INSTRUCTIONS][:16]
    prepared, configs = model._prepare_all(queries, GenerationConfig(max_new_tokens=args.new_tokens))
    prompts = [p.prompt for p in prepared]
    base.generate(prompts[:1], GenerationConfig(max_new_tokens=2))  # warm-up (fills the store as well)

    base.engine.store.clear()
    t = time.perf_counter()
    reused = base.generate(prompts, configs)
    t_reuse = time.perf_counter() - t
    t = time.perf_counter()
    recomputed = base.generate(prompts, configs, reuse_prefix=False)
    t_recompute = time.perf_counter() - t
    same = sum(a.token_ids == b.token_ids for a, b in zip(reused, recomputed))
    result = {
        "model": args.model, "template": model.template.provenance()["id"], "requests": len(prompts),
        "preamble_tokens": base.count_tokens(model.render("x")) - 8, "max_new_tokens": args.new_tokens,
        "generated_tokens": sum(c.completion_tokens for c in reused),
        "seconds": {"reuse": round(t_reuse, 2), "recompute": round(t_recompute, 2)},
        "speedup": round(t_recompute / t_reuse, 2), "identical_outputs": f"{same}/{len(prompts)}",
    }
    print(json.dumps(result, indent=2))
    write_result("urial_throughput", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
