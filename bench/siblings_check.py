"""Do the tuned siblings of the embedded base behave like assistants? For each model (an SFT or DPO adapter
folder, prompted with the layout it was trained on via ``--method auto``): greedy answers to 20 held-out
instructions (examples/heldout-20.jsonl: drawn from the evaluation set, none in the SFT data) and the 6
harmful requests of bench/urial_selfstop.py, at most 256 new tokens. Prints per answer whether it stopped
by itself, and the totals (self-stopped of 20, leaked delimiters, over-refusals, harmful declined).

    python bench/siblings_check.py runs/siblings/sft runs/siblings/dpo [--repetition-penalty 1.0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from urial_selfstop import HARMFUL, LEAKS, refused  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model specs (adapter folders made by alignkit train)")
    ap.add_argument("--input", default=str(Path(__file__).parent.parent / "examples" / "heldout-20.jsonl"))
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--repetition-penalty", type=float, default=None,
                    help="default: the method's recommendation (1.15 for the urial layout)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--scary", help="JSONL of benign requests that sound dangerous (e.g. examples/reward/"
                    "scary-heldout.jsonl): answered too, and counted as over-refused when declined")
    ap.add_argument("--json", help="also write the answers and totals here")
    args = ap.parse_args(argv)

    from alignkit import GenerationConfig, load_model
    from alignkit.methods import MethodOptions, apply_method, recommended_repetition_penalty

    held = [json.loads(line) for line in open(args.input)]
    scary = [json.loads(line)["prompt"] for line in open(args.scary)] if args.scary else []
    prompts = [r["prompt"] for r in held] + HARMFUL + scary
    report = {}
    for spec in args.models:
        model = apply_method(load_model(spec), MethodOptions(method="auto"))
        rp = args.repetition_penalty
        if rp is None:
            rp = recommended_repetition_penalty(model)
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, repetition_penalty=rp)
        t0 = time.perf_counter()
        comps = []
        for i in range(0, len(prompts), args.batch_size):
            comps += model.generate(prompts[i : i + args.batch_size], cfg)
        rows = [{"instruction": q, "answer": c.text, "self_stopped": c.finish_reason == "stop",
                 "tokens": c.completion_tokens, "leak": bool(LEAKS.search(c.text)),
                 "refusal": refused(c.text)} for q, c in zip(prompts, comps)]
        benign, harmful = rows[: len(held)], rows[len(held) : len(held) + len(HARMFUL)]
        scary_rows = rows[len(held) + len(HARMFUL) :]
        totals = {
            "model": spec, "method": model.method, "layout": model.method_info(), "repetition_penalty": rp,
            "max_new_tokens": args.max_new_tokens, "seconds": round(time.perf_counter() - t0, 1),
            "benign": len(benign), "non_empty": sum(bool(r["answer"].strip()) for r in benign),
            "self_stopped": sum(r["self_stopped"] for r in benign),
            "leaked_delimiter": sum(r["leak"] for r in rows),
            "over_refusals": sum(r["refusal"] for r in benign),
            "harmful": len(harmful), "harmful_declined": sum(r["refusal"] for r in harmful),
            "mean_tokens": round(sum(r["tokens"] for r in benign) / len(benign), 1),
        }
        if scary_rows:
            totals.update({"scary": len(scary_rows), "scary_over_refused": sum(r["refusal"] for r in scary_rows),
                           "scary_self_stopped": sum(r["self_stopped"] for r in scary_rows)})
        for r in rows:
            flag = "stop" if r["self_stopped"] else "LIMIT"
            print(f"[{flag:5}] {r['instruction'][:50]!r:54} -> {r['answer'][:90]!r}", file=sys.stderr)
        print(json.dumps(totals, indent=2))
        report[spec] = {"totals": totals, "answers": rows}
        model.close()
    if args.json:  # the recipe's own record (scripts/siblings_results.py gathers it into docs/results)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
