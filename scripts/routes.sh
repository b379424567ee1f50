#!/usr/bin/env bash
# The route stages of the embedded base model, made offline on a CPU (`make routes`; needs `make siblings`):
#   1. BPO pairs: the siblings' preference pairs (URIAL answer over raw continuation, 40 prompts); the base
#      model as teacher (few-shot completion on llama.cpp) says why the preferred answer is better and writes an
#      improved prompt; off-topic rewrites (a small teacher copies its examples) are dropped with the reason
#   2. Aligner triples: the base's URIAL answers to the same prompts; the base model as teacher (few-shot) writes
#      the corrected answer
#   3. train bpo, train aligner (LoRA on the base, tuned-k0 layout, identity warm-up for the corrector)
#   4. checks: every route side by side (bench/routes_check.py -> docs/results/routes.json)
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

step "4/4 every route side by side -> docs/results/routes.json"
"$BIN/python" bench/routes_check.py --bpo "$OUT/bpo" --aligner "$OUT/aligner" --sft "$SIB/sft" --dpo "$SIB/dpo"
