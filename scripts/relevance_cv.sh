#!/usr/bin/env bash
# The README's relevance tables: 5-fold cross-validation over all Chorus queries of the default relevance model
# (configs/sft_chorus.yaml), its late-mask variant, and the default trained without the rule teacher (no CoT:
# grade tokens only), beside the baselines on the same folds. Three models x 5 folds; about 35 min per model
# on 2 cores (one thread each, two at a time: ~70 min in all). Usage: DATA=runs/quickstart/data/chorus bash
# scripts/relevance_cv.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-runs/quickstart/data/chorus}
OUT=${1:-runs/relevance_cv}
CFG=src/searchrl/configs/sft_chorus.yaml
cv() { OMP_NUM_THREADS=1 .venv/bin/searchrl eval relevance --cv 5 --config "$CFG" --data "$DATA" --out "$OUT/$1" \
         "${@:2}" > "$OUT/$1.log" 2>&1; }
mkdir -p "$OUT"
cv default & cv late --set prefix.mask=late & wait
cv no_rule_teacher --set cot_fraction=0
.venv/bin/python scripts/cv_compare.py default="$OUT/default" late_mask="$OUT/late" \
    without_rule_teacher="$OUT/no_rule_teacher" --json "$OUT/summary.json" | tee "$OUT/summary.md"
