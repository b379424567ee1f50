"""LIMA's recipe against alignkit's default (LIMA's optimiser on a short schedule), on the embedded base, same
data, same held-out conversations:

- ``optimiser``: ``train sft --recipe lima-optimiser --dev-size -1`` (LoRA, 3 epochs, batch 4, 512 tokens);
- ``lima``: ``train sft --recipe lima`` (full fine-tuning, 15 epochs, lr 1e-5 -> 1e-6, batch 64, 2048 tokens,
  residual dropout to 0.2, the best epoch by dev loss).

Both hold out the same conversations of the shipped SFT set (``alignkit-sft``, seed 0; min(50, 10%)) and report
their dev loss per epoch; then both answer the 20 held-out instructions, the 6 harmful requests and 10 benign
requests that sound dangerous (bench/siblings_check.py): self-stop, leaks, refusals, length.

    python bench/lima_recipe.py          # resumable: each training continues from its last checkpoint

Writes docs/results/lima_recipe.json. Long on a CPU: the lima run is 15 epochs of full fine-tuning.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _results import write_result  # bench/_results.py: docs/results/NAME.json

OUT = Path("runs/lima")
RUNS = {"optimiser": ["--recipe", "lima-optimiser", "--dev-size", "-1"], "lima": ["--recipe", "lima"]}


def train(name: str, extra: list[str]) -> float:
    out = OUT / name
    if (out / "alignkit.json").is_file():
        return 0.0
    cmd = [sys.executable, "-m", "alignkit", "train", "sft", "--model", "gemma-3-270m", "--data", "alignkit-sft",
           "--template", "tuned-k0", "--output", str(out), *extra]
    if (out / "checkpoints").is_dir():
        cmd.append("--resume")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    seconds = {name: train(name, extra) for name, extra in RUNS.items()}
    infos = {name: json.loads((OUT / name / "alignkit.json").read_text()) for name in RUNS}
    ids = {name: info["dev"]["ids"] for name, info in infos.items()}
    if ids["optimiser"] != ids["lima"]:
        raise SystemExit(f"the two runs held out different conversations: {ids}")
    check = OUT / "check.json"
    subprocess.run([sys.executable, str(Path(__file__).parent / "siblings_check.py"), str(OUT / "optimiser"),
                    str(OUT / "lima"), "--scary", "examples/reward/scary-heldout.jsonl", "--json", str(check)],
                   check=True)
    checked = json.loads(check.read_text())
    result = {"dev_ids": ids["lima"], "runs": {}}
    for name, info in infos.items():
        totals = checked[str(OUT / name)]["totals"]
        result["runs"][name] = {"recipe": info["recipe"], "tuning": info["tuning"], "dev": info["dev"],
                                "result": info["result"], "train_seconds_this_run": round(seconds[name], 1),
                                "check": totals}
    print(json.dumps({n: {"best_dev_loss": r["dev"]["best"], "check": r["check"]} for n, r in result["runs"].items()},
                     indent=2))
    write_result("lima_recipe", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
