"""Do two GPU runs with one seed give the same weights, with and without `--full_determinism`? (README, "Resuming
and reproducibility".) Run on a machine with a CUDA GPU:

    python scripts/gpu_determinism.py OUTPUT_DIR

Each backbone (timm's random init: repeatability is a property of the kernels, not of the weights' values) is
fine-tuned twice per setting for 2 epochs on the bundled BreastMNIST at 64 px, and the two runs' weights compared.
Prints one line per backbone and setting and writes them to OUTPUT_DIR/determinism.json.
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


def train_twice(model_dir: Path, output_dir: Path, deterministic: bool) -> list[dict[str, torch.Tensor]]:
    weights = []
    for attempt in (1, 2):
        run_dir = output_dir / f"{'deterministic' if deterministic else 'default'}-{attempt}"
        argv = ["--model", str(model_dir), "--output_dir", str(run_dir), "--strategy", "ft", "--image_size", "64"]
        argv += ["--num_train_epochs", "2", "--seed", "0", "--bootstrap_resamples", "0"]
        run(*parse_args(argv + (["--full_determinism"] if deterministic else [])))
        # Deterministic mode is process-wide; the next run must start from the default.
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        weights.append(load_file(run_dir / "model.safetensors"))
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--models", nargs="+", default=["densenet121", "efficientnet_lite0"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("no CUDA GPU: this script checks GPU kernels (on the CPU, runs are bit-identical; tests check it)")
    rows = []
    for name in args.models:
        model_dir = args.output_dir / name / "weights"
        torch.manual_seed(0)
        save_for_hf(timm.create_model(name, pretrained=False), model_dir, safe_serialization=True)
        for deterministic in (False, True):
            first, second = train_twice(model_dir, args.output_dir / name, deterministic)
            gaps = {key: (first[key].float() - second[key].float()).abs().max().item() for key in first}
            row = {
                "model": name,
                "full_determinism": deterministic,
                "tensors": len(gaps),
                "tensors_that_differ": sum(gap > 0 for gap in gaps.values()),
                "max_abs_difference": max(gaps.values()),
                "device": torch.cuda.get_device_name(0),
            }
            rows.append(row)
            print(
                f"{name}, full_determinism={deterministic}: {row['tensors_that_differ']} of {row['tensors']} weight "
                f"tensors differ between two runs, by at most {row['max_abs_difference']:.3g}",
                flush=True,
            )
    (args.output_dir / "determinism.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
