"""Per-token cost of logit arithmetic on the embedded Gemma-3-270m, measured side by side in one run: one model
alone, DeRa (two sides in lockstep) and proxy-tuning (three sides: base + alpha * (expert - antiexpert)), each side
a separate copy of the model with its own key/value cache, all batched; greedy, the same prompts, a fixed number
of new tokens (end-of-sequence switched off). Also checks that proxy's tokens equal a direct computation from the
three models' logits on the first prompt. Target (issue #28): three sides <= 3.3x one model per token.

    python bench/mix_cost.py [--new-tokens 32] [--batch 8] [--alpha 1.0]
"""

from __future__ import annotations

import argparse
import json
import sys

from _results import timed, write_result  # bench/_results.py: docs/results/NAME.json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--out", help="result file (default: docs/results/mix_cost.json)")
    args = ap.parse_args(argv)

    import torch

    import alignkit as ak
    from alignkit import GenerationConfig, load_model
    from alignkit.methods.dera import DeRa
    from alignkit.methods.proxy import ProxyTuned

    sides = [ak.load(load_model(args.model), method="none") for _ in range(3)]  # three separate copies
    for m in sides:
        m.base.engine.eos_ids = set()  # every row generates exactly --new-tokens
    base, expert, anti = sides
    prompts = [f"Question {i}: what is a good way to learn a new language? Answer:" for i in range(args.batch)]
    cfg = GenerationConfig(max_new_tokens=args.new_tokens)
    dera = DeRa(anti, expert, 0.5)
    proxy = ProxyTuned(base, expert, anti, args.alpha)
    base.generate(prompts[:2], GenerationConfig(max_new_tokens=2))  # warm-up

    t_one, one = timed(lambda: base.generate(prompts, cfg))
    t_dera, two = timed(lambda: dera.generate(prompts, cfg))
    t_proxy, three = timed(lambda: proxy.generate(prompts, cfg))

    # the direct computation, one prompt, no cache: argmax of base + alpha * (expert - anti) over the full sequence
    with torch.no_grad():
        ids, gen = base.base.encode_prompt(prompts[0]), []
        for _ in range(args.new_tokens):
            x = torch.tensor([ids + gen])
            lb, le, la = (m.base.model(x, logits_to_keep=1).logits[0, -1] for m in (base, expert, anti))
            gen.append(int((args.alpha * le + lb - args.alpha * la).argmax()))
    per = {name: t / sum(c.completion_tokens for c in out)
           for name, t, out in (("one_model", t_one, one), ("dera_two_sides", t_dera, two),
                                ("proxy_three_sides", t_proxy, three))}
    result = {
        "model": args.model, "batch": args.batch, "new_tokens": args.new_tokens, "alpha": args.alpha,
        "seconds_per_token": {k: round(v, 4) for k, v in per.items()},
        "dera_vs_one_model": round(per["dera_two_sides"] / per["one_model"], 2),
        "proxy_vs_one_model": round(per["proxy_three_sides"] / per["one_model"], 2),
        "proxy_equals_direct_tokens": list(three[0].token_ids) == gen,
    }
    print(json.dumps(result, indent=2))
    write_result("mix_cost", result, path=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
