#!/usr/bin/env bash
# The Auto-RGN ablation (docs/results/auto-rgn/README.md), in the order it was run: every piece resumes where it
# stopped, so the script can be rerun after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/auto-rgn}
bench() { medft-benchmark hub_configs/benchmarks/auto-rgn.yaml --output_dir "$OUT" --filter "$1" || true; }
bench "strategy=auto_rgn,seed=0"
# The variant with the best validation score over the datasets (seed 0), then its other seeds, and LP and FT.
variant=$(python scripts/defaults_report.py "$OUT" --choose auto_rgn)
bench "strategy=auto_rgn,seed=1|2,$variant"
bench "strategy=ft"
bench "strategy=lp"
python scripts/defaults_report.py "$OUT"
