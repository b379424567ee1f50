#!/usr/bin/env bash
# The tuned siblings of the embedded base model, made offline on a CPU (`make siblings`):
#   1. SFT: LoRA on the shipped curated set (alignkit-sft, 108 conversations), LIMA preset, 3 epochs
#   2. preference pairs: the base aligned in context (URIAL, K=3) preferred over its raw continuation
#   3. DPO: from the SFT adapter (a frozen copy of it is the reference), beta 0.1
#   4. checks: self-stop on 20 held-out instructions; token shift of base vs base+SFT on the SFT's answers
# Each step is skipped when its output is complete, so a rerun resumes. Times are printed per step.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/siblings}
MODEL=${MODEL:-gemma-3-270m}
. "$(dirname "$0")/recipe_steps.sh"  # step, timed

step "1/4 SFT ($OUT/sft)"
if [ ! -f "$OUT/sft/alignkit.json" ]; then
  resume=""; [ -d "$OUT/sft/checkpoints" ] && resume="--resume"
  timed sft "$BIN/alignkit" train sft --model "$MODEL" --data alignkit-sft \
    --template tuned-k0 --output "$OUT/sft" --epochs 3 $resume
fi

step "2/4 preference pairs ($OUT/pairs.jsonl)"
timed pairs "$BIN/alignkit" data pairs --input examples/dpo-prompts.jsonl \
  --output "$OUT/pairs.jsonl" --chosen-model "llamacpp:$MODEL" --chosen-method urial --rejected-method none \
  --max-new-tokens 128

step "3/4 DPO ($OUT/dpo)"
if [ ! -f "$OUT/dpo/alignkit.json" ]; then
  resume=""; [ -d "$OUT/dpo/checkpoints" ] && resume="--resume"
  timed dpo "$BIN/alignkit" train dpo --model "$MODEL" --adapter "$OUT/sft" \
    --data "$OUT/pairs.jsonl" --output "$OUT/dpo" --beta 0.1 --epochs 2 --learning-rate 5e-5 \
    --max-length 384 $resume
fi

step "4/4 checks"
timed check "$BIN/python" bench/siblings_check.py "$OUT/sft" "$OUT/dpo" --json "$OUT/check.json"
"$BIN/python" bench/siblings_check.py "$OUT/sft" --repetition-penalty 1.0 --json "$OUT/check-nopenalty.json"
"$BIN/alignkit" generate --model "$OUT/sft" --method auto --input examples/heldout-20.jsonl \
  --output "$OUT/sft-answers-greedy.jsonl" --repetition-penalty 1.0 --max-new-tokens 256 --resume
"$BIN/alignkit" shift --base "$MODEL" --context urial --aligned "$OUT/sft" --aligned-method auto --input examples/heldout-20.jsonl --output "$OUT/shift-sft.jsonl" \
  --report "$OUT/shift-sft.html" --resume
"$BIN/python" bench/shift_token_classes.py "$OUT/shift-sft.jsonl" > /dev/null  # -> docs/results/shift_token_classes.json

step "results -> docs/results/siblings.json"
"$BIN/python" scripts/siblings_results.py "$OUT" --times "$TIMES" --out docs/results/siblings.json
