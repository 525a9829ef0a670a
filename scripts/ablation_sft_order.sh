#!/usr/bin/env bash
# Label-first vs CoT-first SFT (TaoSR1's order ablation; the README's table) on cross-validation folds of Chorus.
# Both orders train the default config (sft_chorus.yaml) with the CoT on every example (cot_fraction=1, which
# cot_first needs), on the same folds. Label-first reads its grade from the first completion position;
# cot-first's grade is decoded after its reasoning (crossval saves each fold's test_completions.jsonl).
# The two orders run side by side, one thread each: about 25 min a fold on 2 cores (measured with the machine shared).
# Usage: DATA=runs/quickstart/data FOLDS=0,1 bash scripts/ablation_sft_order.sh [OUT [--set KEY=VALUE ...]]
# (e.g. `--set freeze_layers=4`: both orders with the top two blocks training, so that the CoT can be learned)
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
D=${DATA:-runs/quickstart/data}
FOLDS=${FOLDS:-0,1}
OUT=${1:-runs/ablation_sft_order}
shift || true
[ -d "$D" ] || .venv/bin/searchrl data prepare chorus --out "$D"
mkdir -p "$OUT"
order_cv() {  # ORDER [--set ...]: each fold in its own process (memory is returned), then the table of those folds
  local args=(--data "$D" --out "$OUT/$1" --config src/searchrl/configs/sft_chorus.yaml
              --set prompt.order="$1" --set cot_fraction=1 "${@:2}")
  for fold in ${FOLDS//,/ }; do
    OMP_NUM_THREADS=1 .venv/bin/searchrl eval relevance --cv 5 --folds "$fold" "${args[@]}" >> "$OUT/$1.log" 2>&1
  done
  OMP_NUM_THREADS=1 .venv/bin/searchrl eval relevance --cv 5 --folds "$FOLDS" "${args[@]}" >> "$OUT/$1.log" 2>&1
}
order_cv label_first "$@" & first=$!
order_cv cot_first "$@" & second=$!
wait "$first" && wait "$second" || { echo "a fold failed: see $OUT/*.log" >&2; exit 1; }
.venv/bin/python scripts/cv_compare.py label_first="$OUT/label_first" cot_first="$OUT/cot_first" \
  --json "$OUT/summary.json" | tee "$OUT/summary.md"
.venv/bin/python - "$OUT" <<'EOF' | tee -a "$OUT/summary.md"
import json, pathlib, sys
rows = [json.loads(x) for f in sorted(pathlib.Path(sys.argv[1], "cot_first").glob("fold*/seed*/test_completions.jsonl"))
        for x in f.open()]
parsed = [r for r in rows if r["parsed"]]
print(f"cot_first decoded completions: {len(rows)}; format errors {1 - len(parsed) / max(len(rows), 1):.3f}; "
      f"rule adherence {sum(r['consistent'] for r in parsed) / max(len(parsed), 1):.3f} (of the parsed)")
EOF
