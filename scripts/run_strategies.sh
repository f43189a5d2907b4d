#!/usr/bin/env bash
# Runs `accelerate launch train.py --strategy X` for each of the eight strategies, one after the other, on
# one dataset and backbone, then prints a Markdown table of their test metrics from the results.json files.
#   scripts/run_strategies.sh DATASET MODEL OUTPUT_ROOT [extra train.py flags]
# e.g. scripts/run_strategies.sh ../shared/data/breastmnist ../shared/hub/tf_efficientnet_lite0.in1k_mli \
#        runs/breastmnist-lite0 --image_size 64 --num_train_epochs 6 --use_cpu
set -euo pipefail
dataset=$1 model=$2 root=$3
shift 3
for strategy in ft lp lpft gu_lf gu_fl l1sp l2sp auto_rgn; do
  accelerate launch --num_processes 1 train.py --strategy "$strategy" --model "$model" --dataset "$dataset" \
    --output_dir "$root/$strategy" "$@"
done
python scripts/results_table.py "$root"
