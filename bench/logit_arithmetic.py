"""Decoding-time alignment measured on the embedded Gemma-3-270m with its tuned sibling and reward model (issue #28):

1. ``--part sweep``: the alpha sweep of proxy-tuning's ``base + alpha * (SFT sibling - base)`` (the base and the
   anti-expert raw, the SFT sibling under the layout it was trained on) on the 20 held-out instructions, through
   ``alignkit sweep`` (``ak.weight_sweep``): per alpha the judge-free metrics (self-stop, refusal, length,
   repetition), the reward model's mean score and the exact KL per token to the base (alpha 0); and whether
   alpha = 1 gives exactly the SFT sibling's own answers (it should: base + (SFT - base) = SFT).
2. ``--part args``: reward-guided decoding (ARGS, top-k re-scored by log p + w * reward) against best-of-N with
   N = k (both rate k candidates per answer token / per answer) and the plain greedy answer, the base model under
   URIAL as the policy, the same reward model as ARGS's scorer, best-of-N's selector and the measure (so the reward
   figures favour both selectors: they optimise what is measured); self-stop, refusal, length, seconds.

Needs ``make siblings`` (runs/siblings/sft) and the reward model of ``make rewarded`` (runs/rewarded/rm).
Each part updates its own key of docs/results/logit_arithmetic.json.

    python bench/logit_arithmetic.py --part sweep [--max-new-tokens 96]
    python bench/logit_arithmetic.py --part args [--prompts 12] [--max-new-tokens 48] [--k 4] [--weight 1.0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _results import RESULTS, timed, write_result  # bench/_results.py: docs/results/NAME.json

HELDOUT = "examples/heldout-20.jsonl"


def _sweep(args) -> dict:
    import alignkit as ak
    from alignkit import GenerationConfig
    from alignkit.methods import recommended_repetition_penalty

    res = ak.resources()
    tree = {"proxy": {"base": {"none": {"model": args.model}}, "expert": {"auto": {"model": args.sft}},
                      "antiexpert": {"none": {"model": args.model}}}}
    proxy = ak.load(tree, resources=res)
    out = Path(args.work) / "sweep"
    seconds, sweep = timed(lambda: ak.weight_sweep(
        proxy, HELDOUT, output=out, values=args.alphas, scorer=f"reward:{args.rm}", validation_share=0.5,
        max_new_tokens=args.max_new_tokens, batch_size=10, resources=res))
    # alpha 1 against the SFT sibling alone, under the same decoding
    recs = [json.loads(x) for x in open(HELDOUT)]
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens,
                           repetition_penalty=recommended_repetition_penalty(proxy))
    sft = ak.load(args.sft, method="auto", resources=res)
    alone = [c for i in range(0, len(recs), 10) for c in sft.generate([r["prompt"] for r in recs[i : i + 10]], cfg)]
    a1 = [json.loads(x) for x in (out / "alpha-1.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in a1}
    same = sum(by_id[r["id"]]["token_ids"] == list(c.token_ids) for r, c in zip(recs, alone))
    rows = {}
    for alpha, s in sweep.summary["values"].items():
        rows[alpha] = {"answers": s["answers"], "self_stop": round(1 - s["runaway_rate"], 4),
                       "refusal": round(s["refusal_rate"], 4), "mean_tokens": round(s["mean_tokens"], 1),
                       "repetition": round(s["mean_repetition"], 4),
                       "reward": round(s["all"]["mean_score"], 4) if s["all"]["mean_score"] is not None else None,
                       "reward_stderr": round(s["all"]["stderr"], 4) if s["all"]["stderr"] is not None else None,
                       "kl_per_token": round(s["all"]["kl_per_token"], 4)}
    return {"route": tree, "prompts": len(recs), "max_new_tokens": args.max_new_tokens,
            "repetition_penalty": cfg.repetition_penalty, "reward_model": args.rm, "alphas": rows,
            "alpha_1_equals_sft": {"identical_answers": same, "of": len(recs)},
            "recommendation": sweep.recommendation, "seconds": round(seconds, 1)}


def _args(args) -> dict:
    import alignkit as ak
    from alignkit import GenerationConfig
    from alignkit.evaluation.cheap import answer_metrics

    res = ak.resources()
    recs = [json.loads(x) for x in open(HELDOUT)][: args.prompts]
    prompts = [r["prompt"] for r in recs]
    policy = ak.node("urial", model=args.model)
    rm = f"reward:{args.rm}"
    routes = {
        "urial (greedy)": policy,
        f"best-of-{args.k}": ak.node("best-of-n", model=policy, scorer=rm, n=args.k),
        f"args (top-{args.k}, w={args.weight:g})": ak.node("args", model=policy, scorer=rm, top_k=args.k,
                                                          weight=args.weight),
    }
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, seed=0)
    scorer = ak.scorer(rm, resources=res)
    out = {}
    for name, tree in routes.items():
        model = ak.load(tree, resources=res)
        model.generate(prompts[:1], GenerationConfig(max_new_tokens=2))  # warm-up (loads, prefix cache)
        seconds, comps = timed(lambda model=model: model.generate(prompts, cfg))
        rewards = [s.value for s in scorer.score(prompts, [c.text for c in comps])]
        metrics = [answer_metrics(c.text, c.finish_reason, c.completion_tokens) for c in comps]
        n = len(comps)
        rated = [r for r in rewards if r is not None]
        out[name] = {"reward": round(sum(rated) / len(rated), 4) if rated else None, "rated": len(rated),
                     "self_stop": round(sum(not m["runaway"] for m in metrics) / n, 4),
                     "refusal": round(sum(m["refusal"] for m in metrics) / n, 4),
                     "mean_tokens": round(sum(m["tokens"] for m in metrics) / n, 1),
                     "seconds": round(seconds, 1), "seconds_per_answer": round(seconds / n, 2),
                     "answers": [{"id": r["id"], "text": c.text, "reward": None if v is None else round(v, 4)}
                                 for r, c, v in zip(recs, comps, rewards)]}
    base = out["urial (greedy)"]["seconds"]
    for v in out.values():
        v["time_vs_greedy"] = round(v["seconds"] / base, 1)
    return {"policy": "urial (K=3) on " + args.model, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
            "k": args.k, "weight": args.weight, "reward_model": args.rm, "contestants": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["sweep", "args"], required=True)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--sft", default="runs/siblings/sft")
    ap.add_argument("--rm", default="runs/rewarded/rm")
    ap.add_argument("--work", default="runs/logit-arithmetic")
    ap.add_argument("--alphas", default="0,0.5,1,1.5,2")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--out", help="result file (default: docs/results/logit_arithmetic.json)")
    args = ap.parse_args(argv)
    for need in (args.sft, args.rm):
        if not (Path(need) / "alignkit.json").is_file():
            print(f"{need} is missing: run make siblings and make rewarded first", file=sys.stderr)
            return 1
    path = Path(args.out) if args.out else RESULTS / "logit_arithmetic.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.pop("_measured", None)
    commands = result.get("commands", {})
    if args.part == "sweep":
        args.max_new_tokens = args.max_new_tokens or 96
        result["alpha_sweep"] = _sweep(args)
    else:
        args.max_new_tokens = args.max_new_tokens or 48
        result["args_vs_best_of_n"] = _args(args)
    commands[args.part] = " ".join(["python", *sys.argv])
    result["commands"] = commands
    write_result("logit_arithmetic", result, path=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
