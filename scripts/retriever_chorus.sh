#!/usr/bin/env bash
# The README's retriever table on Chorus test: BM25, zero-shot MiniLM, SFT, SFT + hardneg, SFT + R-GRPO and
# R-GRPO with each reward term removed in turn (relevance from the quickstart's SFT relevance model), on the
# quickstart's 3,000-product catalogue with 24 steps per stage (MAX_PRODUCTS=0 for the whole catalogue).
# Needs the quickstart's data and relevance model. Measured: 42 minutes for the table plus ~8 for the exclusivity
# run, on 2 cores shared with another job (less alone).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
D=${DATA:-runs/quickstart/data}
REL=${REL:-runs/quickstart/sft/final}
O=${OUT:-runs/retriever_chorus}
.venv/bin/searchrl train retriever --stage all --ablations --config src/searchrl/configs/retriever_quickstart.yaml \
  --set data_dir="$D" --set max_products="${MAX_PRODUCTS:-3000}" --set optim.max_steps="${STEPS:-24}" --set rebuild_every=8 \
  --set run.save_every=8 --relevance-model "$REL" --out "$O"
# The exclusivity check: R-GRPO with exclusivity weight 1 against weight 0 (the table's "without exclusivity"
# run), everything else equal; the BM25 overlap of the top 10 should drop.
S=".venv/bin/searchrl"
[ -f "$O/ret_rgrpo_exclusivity_1/final/retriever_config.yaml" ] || $S train retriever \
  --config src/searchrl/configs/retriever_quickstart.yaml --set stage=rgrpo --set data_dir="$D" \
  --set max_products="${MAX_PRODUCTS:-3000}" --set optim.max_steps="${STEPS:-24}" --set rebuild_every=8 --set run.save_every=8 \
  --set encoder="$O/ret_sft/final" --set reward.relevance_model="$REL" --set reward.w_x=1.0 \
  --set run.output_dir="$O/ret_rgrpo_exclusivity_1"
$S eval retrieval --retriever "$O/ret_rgrpo_exclusivity_1/final" --data "$D" --split test --max-products \
  "${MAX_PRODUCTS:-3000}" --relevance-model "$REL" --name "sft+rgrpo exclusivity weight 1" \
  --json "$O/exclusivity_1.json"
