"""The route stages on the embedded base, side by side with the other routes: the base under URIAL, with a BPO
rewriter in front, an Aligner corrector behind, both, and the tuned siblings (SFT, also with the corrector; DPO). Greedy answers to the 20 held-out instructions (examples/heldout-20.jsonl) and the 6 harmful
requests of bench/urial_selfstop.py; per route: self-stopped (of 20), leaked delimiters, benign refused,
harmful declined (of 6), mean answer tokens, how often a stage fell back (empty rewrite / correction), the
tokens of all stages per request, and seconds. All routes share one copy of the base weights (adapters are
separate copies: transformers loads one model per adapter folder). Writes docs/results/routes.json.

    python bench/routes_check.py --bpo runs/routes/bpo --aligner runs/routes/aligner \
        [--sft runs/siblings/sft --dpo runs/siblings/dpo] [--max-new-tokens 160]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_result  # noqa: E402
from urial_selfstop import HARMFUL, LEAKS, REFUSAL  # noqa: E402


def routes(args) -> list[tuple[str, str, dict]]:
    """(name, model spec, method options) per route."""
    base = args.model
    out = [("base under URIAL", base, {"method": "urial"}),
           ("BPO > URIAL", base, {"method": "urial", "rewriter": args.bpo}),
           ("URIAL > Aligner", base, {"method": "urial", "corrector": args.aligner}),
           ("BPO > URIAL > Aligner", base, {"method": "urial", "rewriter": args.bpo, "corrector": args.aligner})]
    if args.sft:
        out += [("SFT sibling", args.sft, {"method": "auto"}),
                ("SFT sibling > Aligner", args.sft, {"method": "auto", "corrector": args.aligner})]
    if args.dpo:
        out.append(("DPO sibling", args.dpo, {"method": "auto"}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--bpo", required=True, help="the rewriter (an adapter folder from `alignkit train bpo`)")
    ap.add_argument("--aligner", required=True, help="the corrector (from `alignkit train aligner`)")
    ap.add_argument("--sft")
    ap.add_argument("--dpo")
    ap.add_argument("--input", default=str(Path(__file__).parent.parent / "examples" / "heldout-20.jsonl"))
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--only", help="comma-separated route names to run (default: all)")
    args = ap.parse_args(argv)

    from alignkit import GenerationConfig
    from alignkit.methods import MethodOptions, apply_method, recommended_repetition_penalty
    from alignkit.methods.routes import usage
    from alignkit.models.registry import ModelPool

    held = [json.loads(line) for line in open(args.input)]
    prompts = [r["prompt"] for r in held] + HARMFUL
    pool = ModelPool()
    result = {"model": args.model, "bpo": args.bpo, "aligner": args.aligner, "max_new_tokens": args.max_new_tokens,
              "instructions": args.input, "routes": {}}
    for stage, folder in (("bpo", args.bpo), ("aligner", args.aligner)):  # how each stage was trained
        info_path = Path(folder) / "alignkit.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            res = info.get("result") or {}
            result.setdefault("training", {})[stage] = {
                "records": (info.get("data") or {}).get("records"), "first_loss": res.get("first_loss"),
                "final_loss": res.get("final_loss"), "steps": res.get("steps"),
                "train_seconds": res.get("train_seconds"), "warmup": info.get("warmup")}
    wanted = set(args.only.split(",")) if args.only else None
    for name, spec, opts in routes(args):
        if wanted and name not in wanted:
            continue
        model = apply_method(pool(spec), MethodOptions(**opts), pool)
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, repetition_penalty=recommended_repetition_penalty(model))
        t0 = time.perf_counter()
        comps = []
        for i in range(0, len(prompts), args.batch_size):
            comps += model.generate(prompts[i : i + args.batch_size], cfg)
        seconds = time.perf_counter() - t0
        rows = []
        for q, c in zip(prompts, comps):
            stages = (c.meta or {}).get("route") or []
            rows.append({"instruction": q, "answer": c.text, "self_stopped": c.finish_reason == "stop",
                         "tokens": c.completion_tokens, "leak": bool(LEAKS.search(c.text)),
                         "refusal": bool(REFUSAL.search(c.text[:200])), "usage": usage(c),
                         "fallbacks": [s["fallback"] for s in stages if s.get("fallback")],
                         "rewritten": next((s["output"] for s in stages if s["stage"] == "rewrite"), None)})
        benign, harmful = rows[: len(held)], rows[len(held):]
        totals = {
            "route": model.info().get("method", model.method), "model": spec,
            "repetition_penalty": cfg.repetition_penalty, "seconds": round(seconds, 1),
            "benign": len(benign), "self_stopped": sum(r["self_stopped"] for r in benign),
            "leaked_delimiter": sum(r["leak"] for r in rows), "over_refusals": sum(r["refusal"] for r in benign),
            "harmful": len(harmful), "harmful_declined": sum(r["refusal"] for r in harmful),
            "mean_tokens": round(sum(r["tokens"] for r in benign) / len(benign), 1),
            "stage_fallbacks": sum(len(r["fallbacks"]) for r in rows),
            "tokens_all_stages_per_request": round(sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]
                                                       for r in rows) / len(rows), 1),
        }
        for r in rows:
            print(f"[{'stop' if r['self_stopped'] else 'LIMIT':5}] {r['instruction'][:44]!r:48} -> "
                  f"{r['answer'][:80]!r}", file=sys.stderr)
        print(json.dumps({name: totals}, indent=2))
        result["routes"][name] = {"totals": totals, "answers": rows}
    write_result("routes", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
