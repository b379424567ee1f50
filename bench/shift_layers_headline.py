"""Where in the network the shift arises, measured: ``alignkit shift --layers all`` on the embedded base against its
SFT sibling (``make siblings``' adapter) and against itself under URIAL (K=3), on every ``--every``-th instruction
of the shipped headline set (``alignkit/prompts/eval/alignkit-eval.jsonl``; every 10th = 27 instructions, every task
type and the safety prompts). Reading all 18 layers costs ~2.8x the plain analysis (``bench/shift_layers.py``), so
the whole set of 261 would take hours on a laptop CPU; the subset is the same for both rows.

    python bench/shift_layers_headline.py --row sft|urial [--every 10]
    python bench/shift_layers_headline.py --figures   # docs/assets/shift-layers.png and the report's layer section

- ``sft``: the SFT sibling's greedy answers, scored by the base in the sibling's layout (base context ``urial``),
  as in ``bench/shift_headline.py``;
- ``urial``: the base's own answers under URIAL, scored by the bare base (context ``plain``): for in-context
  alignment the two "models" are the same weights with and without the preamble.

Runs ``alignkit shift`` (resumable: runs/headline-layers/ROW.jsonl, report ROW.html beside it) and writes the row
into docs/results/shift_layers_headline.json (other rows kept): the summary's per-layer values (share of positions
whose aligned token is the lens's top-1, by layer, in each model; mean KL between the two lenses by layer; the
first layer at which each model puts the token on top) over all read positions, by shift class and by token class,
and the activation-difference lens's commonest tokens.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from _results import RESULTS, write_result  # bench/_results.py: docs/results/NAME.json

# row -> (aligned model, its method, the base's context when it scores)
ROWS = {"sft": ("runs/siblings/sft", "auto", "urial"), "urial": ("gemma-3-270m", "urial", "plain")}


def emergence(layers: dict) -> dict:
    """Per group (shift class, token class): the first layer at which the aligned model's lens puts the aligned
    token on top for at least half the positions, the same for the base, and the gap between the two models'
    top-1 shares at the last layer but one -- the figures the docs read."""
    names = layers["layers"]

    def first_half(shares: list[float]) -> int | None:
        return next((n for n, s in zip(names, shares) if s >= 0.5), None)

    out = {}
    groups = {"all": layers["all"], **{f"shift:{k}": v for k, v in layers["by_shift_class"].items()},
              **{f"token:{k}": v for k, v in layers["by_token_class"].items()}}
    for name, g in groups.items():
        out[name] = {"positions": g["positions"],
                     "aligned_majority_top1_from_layer": first_half(g["aligned_top1"]),
                     "base_majority_top1_from_layer": first_half(g["base_top1"]),
                     "aligned_top1_penultimate": g["aligned_top1"][-2],
                     "base_top1_last": g["base_top1"][-1],
                     "peak_kl_layer": names[max(range(len(names)), key=lambda i: g["mean_kl"][i])],
                     "mean_first_top1_aligned": g["mean_first_top1_aligned"],
                     "mean_first_top1_base": g["mean_first_top1_base"]}
    return out


ROOT = Path(__file__).resolve().parents[1]
TITLES = {"sft": "base vs its SFT sibling (tuned weights)", "urial": "base vs itself under URIAL (same weights)"}


def figures(out: Path) -> None:
    """From the committed result file: the top-1 share by layer (docs/assets/shift-layers.png), and a screenshot of
    the SFT row's report at its layer section (docs/assets/shift-layers-report.png; needs that run's report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads((RESULTS / "shift_layers_headline.json").read_text(encoding="utf-8"))["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(5.2 * len(rows), 3.9), sharey=True)
    for ax, (name, row) in zip(axes, sorted(rows.items())):
        lay = row["layers"]
        for cls, colour in (("shifted", "#c0392b"), ("unshifted", "#2e8b57")):
            g = lay["by_shift_class"][cls]
            ax.plot(lay["layers"], g["aligned_top1"], color=colour, label=f"{cls} · aligned model's lens")
            ax.plot(lay["layers"], g["base_top1"], color=colour, linestyle="--", label=f"{cls} · base's lens")
        ax.set_title(f"{TITLES[name]}\n{row['answers']} answers, {row['positions_read']} positions read", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_xticks(lay["layers"][1::2])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share with the answer token top-1")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "assets" / "shift-layers.png", dpi=110)
    plt.close(fig)
    report = out / "sft.html"
    if not report.exists():
        print(f"no {report}: run --row sft first for the report screenshot", file=sys.stderr)
        return
    import playwright.sync_api as playwright

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.resolve().as_uri())
        box = page.locator("#layers").bounding_box()
        page.screenshot(path=str(ROOT / "docs" / "assets" / "shift-layers-report.png"), full_page=True,
                        clip={"x": 0, "y": box["y"] - 8, "width": 1200, "height": 820})
        browser.close()
    if errors:
        raise SystemExit(f"the report logged errors in Chromium: {errors}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", choices=sorted(ROWS), default="sft")
    ap.add_argument("--figures", action="store_true", help="only draw the figures from the result file")
    ap.add_argument("--every", type=int, default=10, help="every N-th instruction of the headline set")
    ap.add_argument("--out", default="runs/headline-layers")
    args = ap.parse_args(argv)
    if args.figures:
        figures(Path(args.out))
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = resources.files("alignkit") / "prompts" / "eval" / "alignkit-eval.jsonl"
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines() if x.strip()][:: args.every]
    inp = out / "instructions.jsonl"
    inp.write_text("".join(json.dumps({"id": r["id"], "instruction": r["instruction"],
                                       "category": "safety" if r.get("safety") else r["type"]}) + "\n" for r in rows))
    aligned, method, context = ROWS[args.row]
    cmd = [sys.executable, "-m", "alignkit", "shift", "--base", "gemma-3-270m", "--context", context, "--aligned",
           aligned, "--aligned-method", method, "--layers", "all", "--input", str(inp),
           "--output", str(out / f"{args.row}.jsonl"), "--report", str(out / f"{args.row}.html"),
           "--resume", "--json", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    (summary,) = json.loads(proc.stdout[proc.stdout.index("{"):]).values()
    layers = summary["layers"]
    row = {"command": " ".join(cmd[1:]), "instructions": len(rows), "every": args.every,
           "answers": summary["answers"], "answer_positions": summary["positions"],
           "shares": {k: summary[k] for k in ("unshifted", "marginal", "shifted")},
           "positions_read": layers["all"]["positions"], "emergence": emergence(layers), "layers": layers,
           "seconds_this_call": round(time.perf_counter() - t0, 1),
           "_measured": {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d")}}
    print(json.dumps(row["emergence"], indent=2))
    old = RESULTS / "shift_layers_headline.json"
    rows_out = json.loads(old.read_text(encoding="utf-8")).get("rows", {}) if old.exists() else {}
    rows_out[args.row] = row
    write_result("shift_layers_headline", {"rows": {k: rows_out[k] for k in sorted(rows_out)}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
