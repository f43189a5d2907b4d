"""What a run leaves in `--output_dir`, written so that a killed run never looks finished.

The model files are written to a temporary folder and renamed into place; `results.json` is written last,
also by rename, so its presence means the run completed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

RESULTS_FILE = "results.json"


def write_json_atomic(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(data, handle, indent=2, allow_nan=True)
        handle.flush()
        os.fsync(handle.fileno())
    Path(handle.name).replace(path)


def save_model_atomic(model, output_dir: str | Path) -> None:
    """`save_pretrained` into a temporary folder, then rename each file into `output_dir`."""
    output_dir = Path(output_dir)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output_dir))
    try:
        model.save_pretrained(staging)
        for file in staging.iterdir():
            file.replace(output_dir / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_finished_run(output_dir: str | Path) -> bool:
    return (Path(output_dir) / RESULTS_FILE).is_file()


def epoch_history(log_history: list[dict[str, Any]], trainable_per_epoch: dict[int, int]) -> list[dict[str, Any]]:
    """One row per epoch from the Trainer's log: training loss, learning rate, validation metrics, and the
    number of trainable parameters during that epoch."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        epoch = max(round(entry["epoch"]) - 1, 0)
        row = rows.setdefault(epoch, {"epoch": epoch + 1})
        if "loss" in entry:
            row["train_loss"] = entry["loss"]
            row["learning_rate"] = entry.get("learning_rate")
        elif "eval_loss" in entry:
            row["validation"] = {
                key.removeprefix("eval_"): value
                for key, value in entry.items()
                if key.startswith("eval_") and not key.endswith(("_runtime", "_per_second"))
            }
    for epoch, count in trainable_per_epoch.items():
        rows.setdefault(epoch, {"epoch": epoch + 1})["trainable_parameters"] = count
    return [rows[epoch] for epoch in sorted(rows)]


def environment() -> dict[str, Any]:
    """The hardware and software a run used, for reports and model cards."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {
        "device": device,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
