"""What reading the layers costs: ``alignkit shift`` with and without ``--layers``, side by side in one run, on the
embedded Gemma-3-270m (18 layers, a 262k-row output head) against itself under URIAL (K=3).

The same answers (the URIAL route's own greedy answers, up to ``--tokens`` tokens, to the first ``--answers``
instructions of examples/instructions.jsonl), the same analyzer settings; timed: the plain exact analysis, then
with ``--layers every:4`` (layers 4, 8, 12, 16, 18) and ``--layers all``. Reading the layers is a second
teacher-forced pass of both models with the hidden states kept, and the output head once per chosen layer at the
chosen positions (every shifted and marginal one, the first 5, and as many unshifted ones as a control).

    python bench/shift_layers.py [--tokens 256] [--answers 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _results import write_result  # bench/_results.py: docs/results/NAME.json

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--answers", type=int, default=4)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import torch

    from alignkit import GenerationConfig, load_model
    from alignkit.analysis.shift import Item, ShiftAnalyzer, ShiftOptions, answer_ids
    from alignkit.methods import MethodOptions, apply_method

    base = load_model("gemma-3-270m")
    aligned = apply_method(base, MethodOptions(method="urial", k=3))
    rows = [json.loads(x) for x in (ROOT / "examples" / "instructions.jsonl").read_text().splitlines()][: args.answers]
    prompts = [r["prompt"] for r in rows]
    comps = aligned.generate(prompts, GenerationConfig(max_new_tokens=args.tokens))
    items = [Item(str(r["id"]), p, c.text, {}, answer_ids(aligned, c)) for r, p, c in zip(rows, prompts, comps)]
    tokens = sum(len(it.answer_ids or []) for it in items)

    def run(layers: str) -> tuple[float, list[dict]]:
        an = ShiftAnalyzer(base, aligned, label="urial", options=ShiftOptions(layers=layers, batch_size=4))
        t = time.perf_counter()
        with torch.no_grad():
            recs = list(an.analyse(items))
        return time.perf_counter() - t, recs

    run("")  # warm-up
    plain, recs = run("")
    every4, recs4 = run("every:4")
    every1, recs_all = run("all")
    read = sum("lens" in p for r in recs_all for p in r["positions"])
    same = [[p["base_rank"] for p in r["positions"]] for r in recs] == \
           [[p["base_rank"] for p in r["positions"]] for r in recs_all]
    last_equal = all(p["lens"]["base_rank"][-1] == p["base_rank"] for r in recs_all for p in r["positions"]
                     if "lens" in p)
    result = {
        "model": "gemma-3-270m vs itself under urial (K=3)", "layers_in_model": base.num_layers,
        "answers": len(items), "answer_tokens": tokens, "positions_read": read,
        "share_of_positions_read": round(read / tokens, 3),
        "per_answer_seconds": {"plain": round(plain / len(items), 2), "every:4": round(every4 / len(items), 2),
                               "all": round(every1 / len(items), 2)},
        "ratio_to_plain": {"every:4": round(every4 / plain, 2), "all": round(every1 / plain, 2)},
        "targets": {"every:4": 2.5, "all": 5.0},
        "layers_read": {"every:4": recs4[0]["positions"][0]["lens"]["layers"] if recs4 and recs4[0]["positions"]
                        else [], "all": base.num_layers},
        "output_ranks_unchanged_by_layers": same, "last_layer_lens_equals_output": last_equal,
        "threads": torch.get_num_threads(),
    }
    print(f"{len(items)} answers, {tokens} tokens, {read} positions read ({read / tokens:.0%}): plain "
          f"{plain / len(items):.2f} s/answer; every:4 {every4 / plain:.2f}x (target <= 2.5); all {every1 / plain:.2f}x "
          f"(target <= 5); last layer's lens = output: {last_equal}")
    write_result("shift_layers", result, path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
