#!/usr/bin/env bash
# The README's relevance tables: 5-fold cross-validation over all Chorus queries of the default relevance model
# (configs/sft_chorus.yaml) and of the default trained without the rule teacher (cot_fraction=0: grade tokens
# only, no rule-written CoT), beside the baselines on the same folds. Each fold trains in its own process (one
# process for all folds grows ~1.5 GB per fold); a last call reuses every finished fold and writes the summary.
# About 7 min per fold and model on one thread; the two models run side by side: ~40 min on 2 cores.
# Usage: DATA=runs/quickstart/data bash scripts/relevance_cv.sh [OUT]   (DEFAULT_ONLY=1: the default model alone)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-runs/quickstart/data}
OUT=${1:-runs/relevance_cv}
CFG=src/searchrl/configs/sft_chorus.yaml
SEARCHRL=${SEARCHRL:-.venv/bin/searchrl}
folds() {  # NAME LOG "F F ..." [--set ...]: those folds, each in its own process
  local name=$1 log=$2 list=$3; shift 3
  for fold in $list; do
    OMP_NUM_THREADS=1 "$SEARCHRL" eval relevance --cv 5 --folds "$fold" --config "$CFG" --data "$DATA" \
      --out "$OUT/$name" "$@" >> "$log" 2>&1
  done
}
table() {  # NAME [--set ...]: the whole table from the reused folds
  local name=$1; shift
  OMP_NUM_THREADS=1 "$SEARCHRL" eval relevance --cv 5 --config "$CFG" --data "$DATA" --out "$OUT/$name" "$@" \
    >> "$OUT/$name.log" 2>&1
}
mkdir -p "$OUT"
if [ "${DEFAULT_ONLY:-0}" = 1 ]; then  # the default alone, two folds side by side (grade_mix_proxy.sh)
  folds default "$OUT/default.log" "0 2 4" & folds default "$OUT/default.f1.log" "1 3" & wait
  table default
  .venv/bin/python scripts/cv_compare.py default="$OUT/default" --json "$OUT/summary.json" | tee "$OUT/summary.md"
  exit 0
fi
{ folds default "$OUT/default.log" "0 1 2 3 4"; table default; } &
{ folds no_rule_teacher "$OUT/no_rule_teacher.log" "0 1 2 3 4" --set cot_fraction=0
  table no_rule_teacher --set cot_fraction=0; } &
wait
.venv/bin/python scripts/cv_compare.py default="$OUT/default" without_rule_teacher="$OUT/no_rule_teacher" \
    --json "$OUT/summary.json" | tee "$OUT/summary.md"
