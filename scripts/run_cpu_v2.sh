#!/usr/bin/env bash
# Study v2 on the 2-core CPU (hub_configs/benchmarks/cpu-v2.yaml, docs/results/cpu-v2/README.md), one piece per
# backbone and dataset, in the order it was run. Every piece resumes where it stopped (finished cells are skipped,
# interrupted ones resume from their checkpoint), so rerun the script, or one piece, after an interruption; each
# piece takes under two hours here. The raw results.json files go straight into the repo's docs/results/cpu-v2/runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/results/cpu-v2/runs}
for backbone in efficientnet-lite0-local densenet121-local; do
    for dataset in breastmnist-local pneumoniamnist-local lc25000-lung-local chest-xray-pneumonia-local; do
        medft-benchmark cpu-v2 --output_dir "$OUT" --filter "backbone=$backbone,dataset=$dataset" || true
    done
done
medft-report "$OUT" --output_dir docs/results/cpu-v2/report --command "scripts/run_cpu_v2.sh"
