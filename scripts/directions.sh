#!/usr/bin/env bash
# The README's "Directions" section in one command: each recipe's claim, over seeds and queries, with intervals.
#   1. scripts/directions.py: Retrieval-GRPO with judges of known quality (random, bm25, model, rules, oracle),
#      against SFT and hardneg, plus exclusivity on/off;
#   2. scripts/rl_room.py: relevance RL with room to improve (SFT on half of each CV fold's train queries, DPO /
#      GRPO variants / guided replay on the other half), with the default SFT on all labels beside it (CV=);
#   3. then scripts/ablation_sft_order.sh: label-first vs CoT-first on CV fold 0 (ORDER_FOLDS=), 19-25 min;
#   4. then scripts/shaping.py: GRPO with the outcome reward vs rule-aware shaping, from an SFT model that writes
#      the CoT (SHAPING_SEEDS=0, SHAPING_STEPS=10, one refill round): 22 min measured (SFT, 2 GRPO runs, 3 decodes).
# Needs the quickstart's data and exported relevance model (bash scripts/quickstart.sh) and, for the sft_all row,
# the CV run of scripts/relevance_cv.sh. The first two run side by side, one thread each. At the defaults (one
# retriever seed: 5 judges + exclusivity off, 40 steps each; rl_room folds 0,1) the whole script took 1 h 54 min
# end to end on 2 cores (directions.py 32 min beside rl_room's ~70, then the order ablation and shaping).
# The README's fuller tables: SEEDS=0,1 FOLDS=0,1,2 (about 3.5 hours).
# On a GPU all of it would be minutes: the cost is MiniLM forwards and backwards, which a GPU runs ~100x faster.
# The whole catalogue (MAX_PRODUCTS=0: 19,406 products) costs about what 3,000 do: an R-GRPO run is ~9-23 min on
# one thread either way: the policy's forwards and backwards, not the re-encoding, are most of it. The README's
# headline rows: MAX_PRODUCTS=0 JUDGES=random,model,oracle (2 seeds: ~2.5 hours on one thread).
# Usage: DATA=runs/quickstart/data MODEL=runs/quickstart/export/model CV=runs/relevance_cv/default \
#        bash scripts/directions.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-runs/quickstart/data}
MODEL=${MODEL:-runs/quickstart/export/model}
CV=${CV:-runs/relevance_cv/default}
OUT=${1:-runs/directions}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
cv_dir=(); [ -d "$CV" ] && cv_dir=(--cv-dir "$CV")
OMP_NUM_THREADS=1 "$PY" scripts/directions.py --data "$DATA" --model "$MODEL" --seeds "${SEEDS:-0}" \
  --judges "${JUDGES:-random,bm25,model,rules,oracle}" --set max_products="${MAX_PRODUCTS:-3000}" \
  --out "$OUT/retriever" --set optim.max_steps="${STEPS:-40}" --json "$OUT/retriever.json" --md "$OUT/retriever.md" \
  > "$OUT/retriever.log" 2>&1 & retriever=$!
OMP_NUM_THREADS=1 "$PY" scripts/rl_room.py --data "$DATA" --folds "${FOLDS:-0,1}" --seeds 0 "${cv_dir[@]}" \
  --out "$OUT/rl_room" --json "$OUT/rl_room.json" --md "$OUT/rl_room.md" > "$OUT/rl_room.log" 2>&1 & room=$!
wait "$retriever" || { echo "scripts/directions.py failed: see $OUT/retriever.log" >&2; exit 1; }
wait "$room" || { echo "scripts/rl_room.py failed: see $OUT/rl_room.log" >&2; exit 1; }
DATA="$DATA" FOLDS="${ORDER_FOLDS:-0}" bash scripts/ablation_sft_order.sh "$OUT/order" > "$OUT/order.log" 2>&1 \
  || { echo "scripts/ablation_sft_order.sh failed: see $OUT/order.log" >&2; exit 1; }
OMP_NUM_THREADS=2 "$PY" scripts/shaping.py --data "$DATA" --seeds "${SHAPING_SEEDS:-0}" --steps "${SHAPING_STEPS:-10}" \
  --grpo-set rollout.max_refill_rounds=1 --out "$OUT/shaping" --json "$OUT/shaping.json" --md "$OUT/shaping.md" \
  > "$OUT/shaping.log" 2>&1 \
  || { echo "scripts/shaping.py failed: see $OUT/shaping.log" >&2; exit 1; }
{ echo "#### Retrieval-GRPO with judges of known quality"; echo; cat "$OUT/retriever.md"; echo
  echo "#### Relevance RL with room to improve"; echo; cat "$OUT/rl_room.md"; echo
  echo "#### Label-first vs CoT-first"; echo; cat "$OUT/order/summary.md"; echo
  echo "#### Rule-aware shaping"; echo; cat "$OUT/shaping.md"; } > "$OUT/section.md"
cat "$OUT/section.md"
