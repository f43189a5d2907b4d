#!/usr/bin/env bash
# Each strategy's own learning rate on validation (docs/results/own-lr/README.md), in the order it was run: every
# piece resumes where it stopped, so the script can be rerun after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/own-lr}
bench() { medft-benchmark hub_configs/benchmarks/own-lr.yaml --output_dir "$OUT" --filter "$1" || true; }
bench "strategy=lp,seed=0"
bench "strategy=auto_rgn,seed=0"
bench "strategy=ft,seed=0"
# Each strategy's rate with the best validation score over the datasets (seed 0), then its other seeds.
for strategy in lp auto_rgn ft; do
    bench "strategy=$strategy,seed=1|2,$(python scripts/defaults_report.py "$OUT" --choose "$strategy")"
done
# Then LP-FT, its LP phase at LP's chosen rate (in the grid file), its fine-tuning rate chosen the same way.
bench "strategy=lpft,seed=0"
bench "strategy=lpft,seed=1|2,$(python scripts/defaults_report.py "$OUT" --choose lpft)"
python scripts/defaults_report.py "$OUT"
