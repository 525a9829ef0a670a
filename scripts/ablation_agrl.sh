#!/usr/bin/env bash
# TaoSR-AGRL on Chorus (the README's AGRL ablation): DPO, GRPO with the outcome reward, GRPO + rule-aware
# shaping, GRPO + shaping + adaptive guided replay; all from the same DPO model, evaluated on test with the CoT
# decoded, plus learning curves (PNG). Reuses scripts/ablation_rl.sh's DPO and GRPO runs (RL=..., run when
# missing). Needs the quickstart's SFT model and data. Measured: 69 minutes beyond ablation_rl.sh, on 2 cores
# shared with another job the whole time (less alone).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
D=${DATA:-runs/quickstart/data}
SFT=${SFT:-runs/quickstart/sft/final}
RL=${RL:-runs/ablation_rl}
O=${OUT:-runs/ablation_agrl}
S=".venv/bin/searchrl"
[ -f "$RL/grpo.json" ] || DATA="$D" SFT="$SFT" OUT="$RL" bash scripts/ablation_rl.sh
mkdir -p "$O"
G="$S train grpo --config src/searchrl/configs/grpo_chorus.yaml --set model=$RL/dpo/final --set data_dir=$D"
$G --set run.output_dir="$O/grpo_shaping" --set reward.kind=rule_aware
$G --set run.output_dir="$O/grpo_shaping_replay" --set reward.kind=rule_aware --set replay.enabled=true
for run in grpo_shaping grpo_shaping_replay; do
  [ -f "$O/$run.json" ] || $S eval relevance --model "$O/$run/final" --data "$D" --split test --decode --json "$O/$run.json"
done
$S plot --run "DPO=$RL/dpo" --run "GRPO=$RL/grpo" --run "GRPO+shaping=$O/grpo_shaping" \
  --run "GRPO+shaping+replay=$O/grpo_shaping_replay" --key valid_macro_f1 --out "$O/plots"
$S plot --run "GRPO=$RL/grpo" --run "GRPO+shaping=$O/grpo_shaping" --run "GRPO+shaping+replay=$O/grpo_shaping_replay" \
  --key reward_mean --key accuracy --smooth 5 --out "$O/plots"
.venv/bin/python - "$RL" "$O" <<'PY'
import json, sys
import numpy as np
from searchrl.metrics.measures import print_table, read_metrics_json
from searchrl.eval.plot import read_metrics
rl, o = sys.argv[1:]
runs = {"DPO": (f"{rl}/dpo.json", f"{rl}/dpo"), "GRPO (outcome reward)": (f"{rl}/grpo.json", f"{rl}/grpo"),
        "GRPO + rule-aware shaping": (f"{o}/grpo_shaping.json", f"{o}/grpo_shaping"),
        "GRPO + shaping + guided replay": (f"{o}/grpo_shaping_replay.json", f"{o}/grpo_shaping_replay")}
rows = []
for name, (metrics, run) in runs.items():
    row = {**read_metrics_json(metrics)["rows"][0], "system": name}
    log = read_metrics(run)
    acc = [r["accuracy"] for r in log if "accuracy" in r and "reward_mean" in r]  # GRPO train accuracy per step
    row["train_acc_std"] = float(np.std(acc)) if acc else float("nan")  # stability: spread across steps
    row["reward_var"] = float(np.var([r["reward_mean"] for r in log if "reward_mean" in r])) if acc else float("nan")
    row["guided_groups"] = sum(r.get("guided_groups", 0) for r in log)
    row["guided_acc"] = (sum(r.get("guided_accuracy", 0) * r.get("guided_rollouts", 0) for r in log)
                         / max(sum(r.get("guided_rollouts", 0) for r in log), 1))
    rows.append(row)
cols = ["macro_f1", "accuracy", "x_rule_adherence", "x_hallucination_rate", "x_format_error_rate",
        "train_acc_std", "reward_var", "guided_groups", "guided_acc"]
print_table(rows, cols, title="TaoSR-AGRL on Chorus test (argmax grade; CoT decoded greedily)")
json.dump({"rows": rows}, open(f"{o}/table.json", "w"), indent=2)
PY
