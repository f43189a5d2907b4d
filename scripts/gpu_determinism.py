"""Do two GPU runs with one seed give the same weights, with and without `--full_determinism`? (README, "Resuming
and reproducibility".) Run on a machine with a CUDA GPU:

    python scripts/gpu_determinism.py OUTPUT_DIR [--image_size 224]

Each backbone (timm's random init: repeatability is a property of the kernels, not of the weights' values) is
fine-tuned twice per setting for 2 epochs on the bundled BreastMNIST (64 px by default), and the two runs' weights
compared; the runs' training times (the Trainer's `train_runtime`) say what determinism costs. Prints one line per
backbone and setting and writes them to OUTPUT_DIR/determinism.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models import save_for_hf

from medft_hf.train import parse_args, run


def train_twice(
    model_dir: Path, output_dir: Path, image_size: int, deterministic: bool
) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """Both runs' weights and training times in seconds."""
    weights, seconds = [], []
    for attempt in (1, 2):
        run_dir = output_dir / f"{'deterministic' if deterministic else 'default'}-{attempt}"
        argv = ["--model", str(model_dir), "--output_dir", str(run_dir), "--strategy", "ft"]
        argv += ["--image_size", str(image_size), "--num_train_epochs", "2", "--seed", "0"]
        argv += ["--bootstrap_resamples", "0"]
        result = run(*parse_args(argv + (["--full_determinism"] if deterministic else [])))
        weights.append(load_file(run_dir / "model.safetensors"))
        seconds.append(result.train_runtime_s)
    return weights, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--models", nargs="+", default=["densenet121", "efficientnet_lite0"])
    parser.add_argument("--image_size", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("no CUDA GPU: this script checks GPU kernels (on the CPU, runs are bit-identical; tests check it)")
    rows = []
    for name in args.models:
        model_dir = args.output_dir / name / "weights"
        torch.manual_seed(0)
        save_for_hf(timm.create_model(name, pretrained=False), model_dir, safe_serialization=True)
        for deterministic in (False, True):
            (first, second), seconds = train_twice(model_dir, args.output_dir / name, args.image_size, deterministic)
            gaps = {key: (first[key].float() - second[key].float()).abs().max().item() for key in first}
            row = {
                "model": name,
                "full_determinism": deterministic,
                "tensors": len(gaps),
                "tensors_that_differ": sum(gap > 0 for gap in gaps.values()),
                "max_abs_difference": max(gaps.values()),
                "image_size": args.image_size,
                "train_runtime_s": seconds,
                "device": torch.cuda.get_device_name(0),
            }
            rows.append(row)
            print(
                f"{name}, full_determinism={deterministic}: {row['tensors_that_differ']} of {row['tensors']} weight "
                f"tensors differ between two runs, by at most {row['max_abs_difference']:.3g}; training "
                f"{seconds[0]:.1f} s and {seconds[1]:.1f} s",
                flush=True,
            )
    (args.output_dir / "determinism.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
