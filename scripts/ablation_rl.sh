#!/usr/bin/env bash
# TaoSR1 stages 2-3 on Chorus (the README's RL ablation): SFT -> pass@N + DPO -> GRPO, and GRPO without
# dynamic sampling / without class balancing, all evaluated on test with the CoT decoded.
# Needs the quickstart's SFT model and data (bash scripts/quickstart.sh). About 35 minutes on 2 cores.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
D=${DATA:-runs/quickstart/data}
SFT=${SFT:-runs/quickstart/sft/final}
O=${OUT:-runs/ablation_rl}
S=".venv/bin/searchrl"
mkdir -p "$O"
[ -f "$O/pairs.jsonl" ] || $S sample --model "$SFT" --data "$D" --n 4 --max-prompts 512 --max-new-tokens 48 \
  --prompts-per-batch 16 --out "$O/pairs.jsonl" --json "$O/pass_at_n.json"
$S train dpo --config src/searchrl/configs/dpo_chorus.yaml --set model="$SFT" --set pairs="$O/pairs.jsonl" \
  --set data_dir="$D" --set run.output_dir="$O/dpo"
G="$S train grpo --config src/searchrl/configs/grpo_chorus.yaml --set model=$O/dpo/final --set data_dir=$D"
$G --set run.output_dir="$O/grpo"
$G --set run.output_dir="$O/grpo_no_dynamic_sampling" --set rollout.dynamic_sampling=false
$G --set run.output_dir="$O/grpo_no_class_balance" --set rollout.class_balance=false
for run in sft dpo grpo grpo_no_dynamic_sampling grpo_no_class_balance; do
  model="$O/$run/final"; [ "$run" = sft ] && model="$SFT"
  $S eval relevance --model "$model" --data "$D" --split test --decode --json "$O/$run.json"
done
.venv/bin/python - "$O" <<'PY'
import sys
from searchrl.metrics.measures import RELEVANCE_COLUMNS, print_table, read_metrics_json
runs = ["sft", "dpo", "grpo", "grpo_no_dynamic_sampling", "grpo_no_class_balance"]
rows = [{**read_metrics_json(f"{sys.argv[1]}/{r}.json")["rows"][0], "system": r} for r in runs]
print_table(rows, RELEVANCE_COLUMNS + ["x_hallucination_rate", "x_format_error_rate"],
            title="TaoSR1 stages on Chorus test (argmax grade; CoT decoded greedily)")
PY
