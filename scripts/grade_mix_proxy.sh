#!/usr/bin/env bash
# The nearest this machine gets to "another team's data" (scripts/grade_mix_proxy.py says what it shifts): Chorus
# re-mixed to two thirds L4 and exported as a team's CSVs, imported with `searchrl data import`, then the default
# config, unchanged, through 5-fold CV beside BM25 thresholds and the other baselines.
# Usage: DATA=runs/quickstart/data bash scripts/grade_mix_proxy.sh [OUT]   (~11 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-runs/quickstart/data}
OUT=${1:-runs/grade_mix_proxy}
SEARCHRL=${SEARCHRL:-.venv/bin/searchrl}
.venv/bin/python scripts/grade_mix_proxy.py --data "$DATA" --out "$OUT/csv"
"$SEARCHRL" data import --judgments "$OUT/csv/judgments.csv" --products "$OUT/csv/products.csv" \
  --map judgments.query=search_term --map judgments.product_id=sku --map judgments.label=rating \
  --map products.product_id=sku --map products.title=name --map products.category=department \
  --labels Exact=4,Substitute=3,Complement=2,Irrelevant=1 --name grade-mix-proxy --seed 1 --out "$OUT/data"
DATA="$OUT/data" DEFAULT_ONLY=1 bash scripts/relevance_cv.sh "$OUT/cv"
