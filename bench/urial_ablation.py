"""The URIAL ablation on the embedded base: K in {0, 1, 3, 8} x answer style {restyled (urial-kK), basic
(basic-kK: same queries, plain answers), paper (urial-paper-kK: the paper's layout and greeting/closing style)} x
repetition-penalty scope {answer, all}, plus three rows on the decline example's role at K=3: no decline example
(urial-k3-helpful), retrieval keeping one decline example (--select similar), and pure-similarity retrieval
(--select similar-any). One table: self-stop, leaked delimiters, over-refusal on ordinary prompts and on
prompts that only sound unsafe, unsafe prompts declined, answer length (and judge scores when --judge is given).

    python bench/urial_ablation.py [--judge none|MODEL] [--limit N]

Runs ``alignkit eval`` on examples/ablation-46.jsonl (28 ordinary instructions, 10 that sound unsafe but are
not, 8 unsafe; resumable under runs/ablation) and writes docs/results/urial_ablation.json. basic at K=0 is the
restyled K=0 row (no examples: nothing to restyle) and is not repeated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml
from _results import write_result  # bench/_results.py: docs/results/NAME.json

STYLES = {"restyled": "urial-k{k}", "basic": "basic-k{k}", "paper": "urial-paper-k{k}"}


def contestants() -> list[dict]:
    out = []
    for k in (0, 1, 3, 8):
        for style, tpl in STYLES.items():
            if style == "basic" and k == 0:
                continue
            for scope in ("answer", "all"):
                out.append({"name": f"{style}-k{k}-{scope}", "model": "gemma-3-270m", "method": "urial",
                            "template": tpl.format(k=k), "repetition_penalty_scope": scope,
                            "_row": {"k": k, "style": style, "scope": scope}})
    out.append({"name": "no-decline-k3-answer", "model": "gemma-3-270m", "method": "urial",
                "template": "urial-k3-helpful", "_row": {"k": 3, "style": "restyled, no decline example",
                                                          "scope": "answer"}})
    for select in ("similar", "similar-any"):
        out.append({"name": f"{select}-k3-answer", "model": "gemma-3-270m", "method": "urial", "template": "urial-k3",
                    "k": 3, "select": select, "_row": {"k": 3, "style": f"restyled, --select {select}",
                                                       "scope": "answer"}})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", default="none", help="judge model spec (none: judge-free metrics only)")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cs = contestants()
    cfg = {"instructions": "examples/ablation-46.jsonl", "judge": args.judge, "max_new_tokens": args.max_new_tokens,
           "batch_size": 8, "output": str(out), "contestants": [{k: v for k, v in c.items() if k != "_row"} for c in cs]}
    if args.limit:
        cfg["limit"] = args.limit
    if args.judge != "none":
        cfg.update(judge_method="template", judge_max_new_tokens=200, retries=1)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "alignkit", "eval", "--config", str(out / "config.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    items = {json.loads(x)["id"]: json.loads(x) for x in Path(cfg["instructions"]).read_text().splitlines() if x.strip()}
    report = json.loads((out / "report.json").read_text())
    rows = []
    for c in cs:
        recs = [json.loads(x) for x in (out / "answers" / f"{c['name']}.jsonl").read_text().splitlines() if x.strip()]
        recs = [r for r in recs if r["id"] in items]
        ordinary = [r for r in recs if not items[r["id"]]["safety"] and items[r["id"]]["type"] != "borderline"]
        border = [r for r in recs if items[r["id"]]["type"] == "borderline"]
        unsafe = [r for r in recs if items[r["id"]]["safety"]]
        benign = ordinary + border
        row = {**c["_row"], "name": c["name"], "answers": len(recs),
               "self_stopped": sum(not r["metrics"]["runaway"] for r in benign) / max(1, len(benign)),
               "leaked": sum(bool(r["metrics"].get("leak")) for r in recs),
               "refused_ordinary": sum(r["metrics"]["refusal"] for r in ordinary),
               "ordinary": len(ordinary),
               "refused_borderline": sum(r["metrics"]["refusal"] for r in border), "borderline": len(border),
               "declined_unsafe": sum(r["metrics"]["refusal"] for r in unsafe), "unsafe": len(unsafe),
               "mean_tokens": sum(r["metrics"]["tokens"] for r in benign) / max(1, len(benign))}
        s = report["summary"].get(c["name"], {})
        if s.get("mean"):
            row["judge_mean"] = s["mean"]
            row["judge_missing_share"] = s.get("missing_share")
            if s.get("weighted"):
                row["judge_weighted_mean"] = s["weighted"]["mean"]
        rows.append(row)
        print(f"{c['name']:26} stop {row['self_stopped']:.0%} leak {row['leaked']:2} refused ord "
              f"{row['refused_ordinary']}/{row['ordinary']} border {row['refused_borderline']}/{row['borderline']} "
              f"unsafe declined {row['declined_unsafe']}/{row['unsafe']} tokens {row['mean_tokens']:.0f}")
    write_result("urial_ablation", {"command": " ".join(cmd[1:]), "instructions": cfg["instructions"],
                                    "max_new_tokens": args.max_new_tokens, "judge": args.judge, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
