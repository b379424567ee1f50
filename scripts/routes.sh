#!/usr/bin/env bash
# The route stages of the embedded base model, made offline on a CPU (`make routes`; needs `make siblings`):
#   1. BPO pairs: the siblings' preference pairs (URIAL answer over raw continuation, 40 prompts); the base
#      model as teacher (few-shot completion on llama.cpp) says why the preferred answer is better and writes an
#      improved prompt; off-topic rewrites (a small teacher copies its examples) are dropped with the reason
#   2. Aligner triples: the base's URIAL answers to the same prompts; the base model as teacher (few-shot) writes
#      the corrected answer
#   3. train bpo, train aligner (LoRA on the base, tuned-k0 layout, identity warm-up for the corrector)
#   4. every route side by side in `alignkit eval` (examples/eval-routes.yaml, judge-free) ->
#      docs/results/routes-eval.json
# Each step is skipped when its output is complete (the data steps resume by id), so a rerun resumes.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/routes}
SIB=${SIB:-runs/siblings}
MODEL=${MODEL:-gemma-3-270m}
mkdir -p "$OUT"
step() { echo; echo "== $1"; }
for f in pairs.jsonl sft/alignkit.json dpo/alignkit.json; do
  [ -f "$SIB/$f" ] || { echo "make siblings first ($SIB/$f is missing)" >&2; exit 1; }
done

step "1/4 BPO pairs ($OUT/bpo-pairs.jsonl)"
"$BIN/alignkit" data bpo-pairs --input "$SIB/pairs.jsonl" --output "$OUT/bpo-pairs.jsonl" \
  --teacher "llamacpp:$MODEL" --method none --teacher-prompt bpo-fewshot --max-new-tokens 80

step "2/4 Aligner triples ($OUT/aligner-triples.jsonl)"
"$BIN/alignkit" generate --model "llamacpp:$MODEL" --method urial --input examples/dpo-prompts.jsonl \
  --output "$OUT/urial-answers.jsonl" --max-new-tokens 160 --resume
"$BIN/alignkit" data aligner-triples --input "$OUT/urial-answers.jsonl" --output "$OUT/aligner-triples.jsonl" \
  --teacher "llamacpp:$MODEL" --method none --teacher-prompt aligner-fewshot --max-new-tokens 200

step "3/4 train the rewriter and the corrector"
for stage in bpo aligner; do
  data="$OUT/bpo-pairs.jsonl"; [ $stage = aligner ] && data="$OUT/aligner-triples.jsonl"
  if [ ! -f "$OUT/$stage/alignkit.json" ]; then
    resume=""; [ -d "$OUT/$stage/checkpoints" ] && resume="--resume"
    "$BIN/alignkit" train $stage --model "$MODEL" --data "$data" --template tuned-k0 --output "$OUT/$stage" \
      --epochs 3 $resume
  fi
done

step "4/4 every route side by side (alignkit eval, examples/eval-routes.yaml) -> docs/results/routes-eval.json"
"$BIN/alignkit" eval --config examples/eval-routes.yaml --output "$OUT/eval"
"$BIN/python" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
report = json.loads((out / "eval" / "report.json").read_text())
def count(path):
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0
def trained(stage):
    info = json.loads((out / stage / "alignkit.json").read_text())
    r = info["result"]
    return {"records": info["data"]["records"], "first_loss": r["first_loss"], "final_loss": r["final_loss"],
            "steps": r["steps"], "train_seconds": r["train_seconds"], "warmup": info.get("warmup")}
result = {"command": "make routes (scripts/routes.sh)", "eval": report["cheap"],
          "data": {"preference_records": count(Path("runs/siblings/pairs.jsonl")),
                   "bpo_pairs_kept": count(out / "bpo-pairs.jsonl"),
                   "qa_records": count(out / "urial-answers.jsonl"),
                   "aligner_triples_kept": count(out / "aligner-triples.jsonl"),
                   "aligner_triples_unchanged": sum(
                       1 for line in (out / "aligner-triples.jsonl").read_text().splitlines()
                       if line.strip() and json.loads(line)["correction"].strip() == json.loads(line)["answer"].strip())},
          "training": {s: trained(s) for s in ("bpo", "aligner")}}
Path("docs/results/routes-eval.json").write_text(json.dumps(result, indent=2) + "\n")
print("wrote docs/results/routes-eval.json")
PY
