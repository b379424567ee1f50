#!/usr/bin/env bash
# A DPO sibling trained on AI-feedback pairs ranked by a reward model, made offline on a CPU (`make rewarded`).
# Needs the tuned siblings (`make siblings`: the SFT adapter to start from, the old DPO sibling to compare with).
#   1. answers for the safety pairs: the base, in context with a template that has no decline example, answers
#      24 harmful requests (its compliance) and 24 harmless requests that sound dangerous
#   2. reward-model pairs: the siblings' pairs + declines over compliance + answers over refusals
#   3. reward model: LoRA + score head on the base (TRL RewardTrainer), accuracy on held-out pairs
#   4. AI-feedback pairs: K=4 sampled in-context answers per prompt (the DPO prompts, the harmful and the
#      scary ones), ranked by the reward model; chosen = best, rejected = worst, margin >= MARGIN
#   5. DPO from the SFT adapter on the ranked pairs, with the old DPO sibling's settings
#   6. checks: old and new DPO sibling on 20 held-out instructions, 6 harmful requests, 10 held-out scary ones
#   7. DeRa sweep between the SFT sibling (reference) and the new DPO sibling, scored by the reward model
# Each step is skipped when its output is complete, so a rerun resumes.
set -euo pipefail
BIN=${BIN:-.venv/bin}
SIB=${SIB:-runs/siblings}
OUT=${OUT:-runs/rewarded}
MODEL=${MODEL:-gemma-3-270m}
MARGIN=${MARGIN:-0.5}
. "$(dirname "$0")/recipe_steps.sh"  # step, timed
[ -f "$SIB/sft/alignkit.json" ] && [ -f "$SIB/dpo/alignkit.json" ] || { echo "run make siblings first"; exit 1; }

step "1/7 answers for the safety pairs"
for set in harmful scary; do
  timed "answers_$set" "$BIN/alignkit" data answers --input "examples/reward/$set-train.jsonl" \
    --output "$OUT/$set-answers.jsonl" --model "$MODEL" --method urial --template urial-k3-helpful \
    --max-new-tokens 128 --keep-truncated --quiet
done

step "2/7 reward-model pairs ($OUT/rm-pairs.jsonl)"
"$BIN/python" scripts/reward_pairs.py --sibling-pairs "$SIB/pairs.jsonl" --harmful-answers "$OUT/harmful-answers.jsonl" \
  --scary-answers "$OUT/scary-answers.jsonl" --out "$OUT/rm-pairs.jsonl"

step "3/7 reward model ($OUT/rm)"
if [ ! -f "$OUT/rm/alignkit.json" ]; then
  resume=""; [ -d "$OUT/rm/checkpoints" ] && resume="--resume"
  timed reward "$BIN/alignkit" train reward --model "$MODEL" --data "$OUT/rm-pairs.jsonl" --output "$OUT/rm" \
    --eval-share 0.2 --epochs 3 --learning-rate 1e-4 --max-length 512 $resume
fi

step "4/7 AI-feedback pairs ranked by the reward model ($OUT/ranked.jsonl)"
cat examples/dpo-prompts.jsonl examples/reward/harmful-train.jsonl examples/reward/scary-train.jsonl \
  | "$BIN/python" -c "import json,sys; [print(json.dumps({'id': r['id'], 'prompt': r['prompt']})) for r in map(json.loads, sys.stdin)]" \
  > "$OUT/rank-prompts.jsonl"
timed ranked "$BIN/alignkit" data pairs --input "$OUT/rank-prompts.jsonl" --output "$OUT/ranked.jsonl" \
  --removed "$OUT/ranked-dropped.jsonl" --chosen-model "$MODEL" --chosen-method urial \
  --rank-by "reward:$OUT/rm" --k 4 --temperature 0.8 --top-p 0.95 --seed 0 --min-margin "$MARGIN" \
  --max-new-tokens 128 --batch-size 4 --quiet

step "5/7 DPO on the ranked pairs ($OUT/dpo)"
if [ ! -f "$OUT/dpo/alignkit.json" ]; then
  resume=""; [ -d "$OUT/dpo/checkpoints" ] && resume="--resume"
  timed dpo "$BIN/alignkit" train dpo --model "$MODEL" --adapter "$SIB/sft" \
    --data "$OUT/ranked.jsonl" --output "$OUT/dpo" --beta 0.1 --epochs 2 --learning-rate 5e-5 \
    --max-length 384 $resume
fi

step "6/7 checks: old vs new DPO sibling"
if [ ! -f "$OUT/check.json" ]; then
  timed check "$BIN/python" bench/siblings_check.py "$SIB/dpo" "$OUT/dpo" --scary examples/reward/scary-heldout.jsonl \
    --json "$OUT/check.json"
fi

step "7/7 DeRa sweep: SFT sibling (lambda 0) to the new DPO sibling (lambda 1), scored by the reward model"
timed sweep "$BIN/alignkit" dera sweep --ref "$SIB/sft" --aligned "$OUT/dpo" --ref-method auto --aligned-method auto \
  --input examples/heldout-20.jsonl --output "$OUT/sweep" --lams 0,0.5,1,1.5 --max-new-tokens 96 \
  --scorer "reward:$OUT/rm" --validation-share 0.5 --quiet

step "results -> docs/results/rewarded.json"
"$BIN/python" scripts/rewarded_results.py "$OUT" --siblings "$SIB" --out docs/results/rewarded.json
