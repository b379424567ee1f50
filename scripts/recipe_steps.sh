# Shared by the recipes (scripts/siblings.sh, scripts/rewarded.sh; sourced, after BIN and OUT are set):
# step TITLE prints a heading; timed NAME command... runs the command and records its wall time in
# $OUT/times.json (a step skipped because it is done keeps its old time).
mkdir -p "$OUT"
step() { echo; echo "== $1"; }
TIMES="$OUT/times.json"; [ -f "$TIMES" ] || echo '{}' > "$TIMES"
timed() {
  local name=$1; shift; local t0; t0=$(date +%s.%N)
  "$@"
  "$BIN/python" - "$TIMES" "$name" "$t0" "$(date +%s.%N)" <<'PY'
import json, sys
path, name, t0, t1 = sys.argv[1:]
d = json.load(open(path)); d[name] = round(float(t1) - float(t0), 1); json.dump(d, open(path, "w"), indent=2)
PY
}
