#!/usr/bin/env bash
# Cached-feature LP against augmented LP (issue 11; docs/results/lp-cache/README.md). Resumable: rerun after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
for variant in features augmented; do
    medft-benchmark "hub_configs/benchmarks/lp-cache-$variant.yaml" --output_dir "docs/results/lp-cache/$variant/runs"
    medft-report "docs/results/lp-cache/$variant/runs" --output_dir "docs/results/lp-cache/$variant/report" \
        --command "scripts/run_lp_cache.sh"
done
