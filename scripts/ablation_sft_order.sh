#!/usr/bin/env bash
# Label-first vs CoT-first SFT on Chorus (the README's SFT table). Needs the quickstart's
# prepared data (or: searchrl data prepare chorus --out runs/quickstart/data/chorus).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
D=${DATA:-runs/quickstart/data/chorus}
[ -d "$D" ] || .venv/bin/searchrl data prepare chorus --out "$D"
for order in label_first cot_first; do
  .venv/bin/searchrl train sft --config src/searchrl/configs/sft_chorus.yaml --set data_dir="$D" \
    --set run.output_dir=runs/ablation_sft/$order --set prompt.order=$order "$@"
  .venv/bin/searchrl eval relevance --model runs/ablation_sft/$order/final --data "$D" --split test --decode \
    --json runs/ablation_sft/$order.json
done
