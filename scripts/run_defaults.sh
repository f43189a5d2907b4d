#!/usr/bin/env bash
# The runs behind the validation-chosen defaults (docs/results/defaults/README.md), in the order they were made:
# every piece resumes where it stopped, so the script can be rerun after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/defaults}
bench() { medft-benchmark hub_configs/benchmarks/defaults.yaml --output_dir "$OUT" --filter "$1" || true; }
bench "strategy=ft,augmentation=light"
bench "strategy=lp"
bench "strategy=lpft,seed=0"
bench "strategy=auto_rgn"
bench "strategy=ft,augmentation=rrc,seed=0"
# LP-FT's fine-tuning rate: the one with the best validation score over the datasets (seed 0), then its other seeds.
setting=$(python scripts/defaults_report.py "$OUT" --choose lpft)
bench "strategy=lpft,seed=1|2,$setting"
python scripts/defaults_report.py "$OUT"
