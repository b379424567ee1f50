"""Token-shift analysis speed and memory on the embedded Gemma-3-270m, measured side by side.

* single pass (alignkit): one teacher-forced pass per model per batch of answers, per-position
  reductions over zipped chunks of the full-vocabulary distributions;
* per prefix (as the original research code did): for every answer position t, one forward pass of each
  model over prompt + answer[:t], reading the last position's distribution.

Both compute the same metrics on the same answers at T = 256 (checked: identical base ranks). Each
measurement runs in its own process so its peak memory (max RSS) is its own; the single pass is run over
10 and over 100 answers to show that memory stays flat as the number of answers grows.

    python bench/shift_speed.py [--tokens 256] [--many 100]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from _results import write_result  # bench/_results.py: docs/results/NAME.json

TEXT = (
    "Alignment mostly changes the style of a model's answers rather than what it knows. A helpful assistant "
    "restates the question, organises its answer into clear points, adds a short summary and declines harmful "
    "requests politely. Researchers measure this by running the base model over the answers of its aligned "
    "sibling and asking, at every position, how highly the base model ranks the token the aligned model chose. "
    "Most tokens turn out to be the base model's own first choice; the shifted ones are mostly stylistic, such "
    "as greetings, transitions, list markers and disclaimers, and they cluster near the start of the answer. "
)


def _setup(tokens: int, n: int):
    from alignkit import load_model
    from alignkit.analysis.shift import Item, ShiftAnalyzer, ShiftOptions
    from alignkit.methods import MethodOptions, apply_method

    base = load_model("gemma-3-270m")
    aligned = apply_method(base, MethodOptions(method="none"))
    words = (TEXT * 8).split(" ")
    items = []
    for i in range(n):  # answers that differ from one another, each exactly `tokens` tokens long
        text = " ".join(words[i % 40 :])
        ids = base.encode(text)[:tokens]
        items.append(Item(str(i), f"Question {i}: what does alignment change?", base.tokenizer.decode(ids), {}, ids))
    an = ShiftAnalyzer(base, aligned, label="x", options=ShiftOptions(context="plain", batch_size=4))
    return base, aligned, an, items


def worker(kind: str, tokens: int, n: int) -> dict:
    import torch

    base, aligned, an, items = _setup(tokens, n)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    if kind == "single":
        ranks = [[p["base_rank"] for p in r["positions"]] for r in an.analyse(items)]
    else:
        from alignkit.analysis.metrics import exact_positions
        from alignkit.analysis.shift import base_prompt

        ranks = []
        with torch.no_grad():
            for it in items:
                pb = base.encode_prompt(base_prompt("plain", it.instruction))
                pa = base.encode_prompt(it.instruction)
                row = []
                for k in range(len(it.answer_ids)):  # one forward per position and model
                    lb = base.model(torch.tensor([pb + it.answer_ids[:k]]), logits_to_keep=1).logits[0].float().log_softmax(-1)
                    la = base.model(torch.tensor([pa + it.answer_ids[:k]]), logits_to_keep=1).logits[0].float().log_softmax(-1)
                    row += exact_positions(la, lb, torch.tensor([it.answer_ids[k]]), top_k=5,
                                           token_text=base.token_text, start=k)
                ranks.append([p["base_rank"] for p in row])
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "answers": n, "tokens": tokens, "seconds": seconds, "per_answer": seconds / n,
            "rss_after_load_mb": round(rss0), "peak_rss_mb": round(peak), "ranks": ranks[0]}


def _run(kind: str, tokens: int, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--tokens", str(tokens), "--n", str(n)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--many", type=int, default=100)
    ap.add_argument("--worker", choices=["single", "prefix"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.tokens, args.n)))
        return 0
    prefix = _run("prefix", args.tokens, 1)
    single1 = _run("single", args.tokens, 1)
    single10 = _run("single", args.tokens, 10)
    single_many = _run("single", args.tokens, args.many)
    same = prefix["ranks"] == single1["ranks"]
    result = {
        "model": "gemma-3-270m (base vs itself, plain vs raw context)", "answer_tokens": args.tokens,
        "per_answer_seconds": {"per_prefix": round(prefix["per_answer"], 2), "single_pass_1": round(single1["per_answer"], 2),
                               "single_pass_10": round(single10["per_answer"], 2),
                               f"single_pass_{args.many}": round(single_many["per_answer"], 2)},
        "speedup_vs_per_prefix": round(prefix["per_answer"] / single10["per_answer"], 1),
        "peak_rss_mb": {"per_prefix_1": prefix["peak_rss_mb"], "single_pass_10": single10["peak_rss_mb"],
                        f"single_pass_{args.many}": single_many["peak_rss_mb"]},
        "rss_after_load_mb": single10["rss_after_load_mb"],
        "peak_ratio_many_vs_10": round(single_many["peak_rss_mb"] / single10["peak_rss_mb"], 3),
        "identical_base_ranks": same,
    }
    print(json.dumps(result, indent=2))
    write_result("shift_speed", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
