#!/usr/bin/env bash
# Runs `accelerate launch train.py --strategy X` for every registered strategy (or those in $STRATEGIES), one after
# the other, on one dataset and backbone, then prints a Markdown table of their test metrics from the results.json.
#   scripts/run_strategies.sh DATASET MODEL OUTPUT_ROOT [extra train.py flags]
# e.g. scripts/run_strategies.sh ../shared/data/breastmnist ../shared/hub/tf_efficientnet_lite0.in1k_mli \
#        runs/breastmnist-lite0 --image_size 64 --num_train_epochs 6 --use_cpu
set -euo pipefail
dataset=$1 model=$2 root=$3
shift 3
strategies=${STRATEGIES:-$(python -c "from medft_hf.strategies import STRATEGIES; print(*STRATEGIES)")}
for strategy in $strategies; do
  accelerate launch --num_processes 1 train.py --strategy "$strategy" --model "$model" --dataset "$dataset" \
    --output_dir "$root/$strategy" "$@"
done
python scripts/results_table.py "$root"
