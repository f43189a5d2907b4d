#!/usr/bin/env bash
# The GPU rows of docs/performance.md and the measured `throughput` of hub_configs/benchmarks/paper.yaml: the paper's
# backbones at 224 px with bf16 autocast and batch 32 (paper.yaml's settings), through scripts/bench_speed.py.
# Weights are random (timm's init): speed does not depend on their values, and no ImageNet weights for ResNet-50 or
# VGG-19 can be had offline here.
#
# usage: scripts/bench_gpu.sh DATASET OUTPUT_DIR [more bench_speed.py flags, which override the ones below]
set -uo pipefail
dataset=$1 output=$2
shift 2
models=${TMPDIR:-/tmp}/medft-bench-models
python=${PYTHON:-python}
mkdir -p "$output"
"$python" - "$models" <<'PY'
import sys

import timm
from timm.models import save_for_hf

for name in ("vgg19", "resnet50", "densenet121"):
    save_for_hf(timm.create_model(name, pretrained=False), f"{sys.argv[1]}/{name}", safe_serialization=True)
PY
common=(--dataset "$dataset" --image_size 224 --batch_size 32 --bf16 --max_train_samples 1200 --epochs 2)
for name in vgg19 resnet50 densenet121; do
    "$python" scripts/bench_speed.py --model "$models/$name" "${common[@]}" --throughput_only --repeats 2 \
        --json "$output/throughput-$name.json" "$@" 2>&1 | tee -a "$output/throughput.txt"
done
for name in resnet50 densenet121; do
    "$python" scripts/bench_speed.py --model "$models/$name" "${common[@]}" --strategies ft,lp --repeats 3 \
        --json "$output/bench-$name.json" "$@" 2>&1 | tee "$output/bench-$name.txt"
done
