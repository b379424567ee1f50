"""Per-token cost of DeRa decoding on the embedded Gemma-3-270m, measured side by side in one run:

* one model alone (cached decoding, batched);
* DeRa: both models in lockstep, each with its own key/value cache, batched;
* the naive loop: every step recomputes both models over the whole sequence (no cache).

By default two separate copies of Gemma play reference and aligned model (the cost does not depend on the
weights); ``--ref runs/siblings/sft --aligned runs/siblings/dpo`` measures the tuned siblings (LoRA
adapters, unmerged). Greedy, the same prompts, a fixed number of new tokens. Target: DeRa <= 2.2x one model
per token.

    python bench/dera_cost.py [--new-tokens 32] [--batch 8] [--lam 0.5] [--ref SPEC --aligned SPEC]
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
    ap.add_argument("--naive-prompts", type=int, default=2)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--ref", default="gemma-3-270m")
    ap.add_argument("--aligned", default="gemma-3-270m")
    ap.add_argument("--out", help="result file (default: docs/results/dera_cost.json, or dera_cost-siblings.json "
                    "for other models)")
    args = ap.parse_args(argv)

    import torch

    from alignkit import GenerationConfig, load_model
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.methods.dera import DeRa

    ref = apply_method(load_model(args.ref), MethodOptions(method="none"))
    aligned = apply_method(load_model(args.aligned), MethodOptions(method="none"))  # a second copy
    for m in (ref, aligned):
        m.base.engine.eos_ids = set()  # every row generates exactly --new-tokens
    prompts = [f"Question {i}: what is a good way to learn a new language? Answer:" for i in range(args.batch)]
    cfg = GenerationConfig(max_new_tokens=args.new_tokens)
    dera = DeRa(ref, aligned, args.lam)
    aligned.generate(prompts[:2], GenerationConfig(max_new_tokens=2))  # warm-up

    t_one, one = timed(lambda: aligned.generate(prompts, cfg))
    t_dera, mixed = timed(lambda: dera.generate(prompts, cfg))
    n_tok = sum(c.completion_tokens for c in mixed)

    def naive():
        out = []
        with torch.no_grad():
            for p in prompts[: args.naive_prompts]:
                ids_r, ids_a, gen = ref.base.encode_prompt(p), aligned.base.encode_prompt(p), []
                for _ in range(args.new_tokens):
                    lr = ref.base.model(torch.tensor([ids_r + gen]), logits_to_keep=1).logits[0, -1]
                    la = aligned.base.model(torch.tensor([ids_a + gen]), logits_to_keep=1).logits[0, -1]
                    gen.append(int((args.lam * la + (1 - args.lam) * lr).argmax()))
                out.append(gen)
        return out

    t_naive, naive_out = timed(naive)
    same = [list(c.token_ids) for c in mixed[: args.naive_prompts]] == naive_out
    per = {"one_model": t_one / sum(c.completion_tokens for c in one), "dera": t_dera / n_tok,
           "naive_recompute": t_naive / (args.naive_prompts * args.new_tokens)}
    result = {
        "ref": args.ref, "aligned": args.aligned, "batch": args.batch, "new_tokens": args.new_tokens,
        "lam": args.lam, "seconds_per_token": {k: round(v, 4) for k, v in per.items()},
        "dera_vs_one_model": round(per["dera"] / per["one_model"], 2),
        "naive_vs_dera": round(per["naive_recompute"] / per["dera"], 1),
        "dera_equals_naive_tokens": same,
    }
    print(json.dumps(result, indent=2))
    default = args.ref == args.aligned == "gemma-3-270m"
    write_result("dera_cost" if default else "dera_cost-siblings", result, path=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
