"""A judge over the API, as users run one: `alignkit serve` in front of the local judge (SmolLM2-135M-Instruct on
llama.cpp under its chat template), read through the openai backend -- the rubric's JSON schema sent as
response_format, weighted (G-Eval) scores read from the chat log-probabilities of each reply. The same judge is
also read locally, in this process, on the same answers.

    python bench/served_judge.py [--rows 30] [--rubric just-eval]

Answers judged: alignkit's own labelled completions (the ``blind`` split of prompts/eval/refusal-labelled.jsonl:
short answers, helpful ones and refusals). Per aspect: how the served judge's parsed scores agree with its
weighted ones (Pearson, Spearman, mean difference, share equal after rounding), and how far the served weighted
scores are from the local ones (llama.cpp's kernels give slightly different logits when a sequence is evaluated
in other chunks, so the two readings are close, not equal; on transformers they are equal: tests/evaluation/
test_api_judge.py). Writes docs/results/served_judge.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _results import timed, write_result  # bench/_results.py: docs/results/NAME.json

from alignkit.api import load
from alignkit.evaluation.judge import Judge, load_rubric
from alignkit.evaluation.refusal import load_labelled
from alignkit.evaluation.weighted import agreement

JUDGE = "llamacpp:smollm2-135m-instruct"


def serve(port: int) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("alignkit")
    proc = subprocess.Popen([str(exe), "serve", "--model", JUDGE, "--method", "template", "--name", "judge",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"alignkit serve exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise SystemExit("alignkit serve did not come up in 300 s") from None
            time.sleep(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--rubric", default="just-eval")
    ap.add_argument("--port", type=int, default=8731)
    ap.add_argument("--max-new-tokens", type=int, default=450)
    args = ap.parse_args(argv)
    rows = load_labelled(split="blind")[: args.rows]
    items = [{"instruction": r["prompt"], "answer": r["completion"]} for r in rows]
    rubric = load_rubric(args.rubric)

    proc = serve(args.port)
    try:
        served = Judge(load(f"openai:judge@http://127.0.0.1:{args.port}/v1"), rubric, weighted=True,
                       max_new_tokens=args.max_new_tokens, batch_size=8)
        served_s, there = timed(lambda: served.judge(items))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    local = Judge(load(JUDGE, method="template"), rubric, weighted=True, max_new_tokens=args.max_new_tokens,
                  batch_size=8)
    local_s, here = timed(lambda: local.judge(items))

    per_aspect = {}
    for a in rubric.aspects:
        pairs = [(t["result"][a]["score"], t["weighted"][a]["weighted"]) for t in there
                 if t["result"][a]["score"] is not None and t.get("weighted", {}).get(a, {}).get("weighted") is not None]
        diffs = [abs(t["weighted"][a]["weighted"] - h["weighted"][a]["weighted"]) for t, h in zip(there, here)
                 if t["raw"] == h["raw"] and t["weighted"][a]["weighted"] is not None
                 and h["weighted"][a]["weighted"] is not None]
        per_aspect[a] = {"served_parsed_vs_weighted": agreement(pairs),
                         "served_vs_local_weighted": {"n": len(diffs),
                                                      "max_abs_diff": max(diffs) if diffs else None,
                                                      "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None}}
        ag = per_aspect[a]["served_parsed_vs_weighted"]
        print(f"{a:12} n={ag['n']:3} pearson={ag['pearson']} rounded_equal={ag['rounded_equal']} "
              f"served-local max diff={per_aspect[a]['served_vs_local_weighted']['max_abs_diff']}")
    result = {"judge": JUDGE, "served_as": "alignkit serve --method template (openai backend client)",
              "rubric": args.rubric, "answers": f"alignkit refusal-labelled blind split, first {len(items)}",
              "served_provenance": served.provenance(), "local_provenance": local.provenance(),
              "unreadable_served": sum(bool(t["missing"]) for t in there),
              "same_reply_served_and_local": sum(t["raw"] == h["raw"] for t, h in zip(there, here)),
              "items": len(items), "seconds": {"served": round(served_s, 1), "local": round(local_s, 1)},
              "aspects": per_aspect}
    print(f"structured: {served.structured}; same reply served and local: {result['same_reply_served_and_local']}"
          f"/{len(items)}; unreadable served: {result['unreadable_served']}")
    write_result("served_judge", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
