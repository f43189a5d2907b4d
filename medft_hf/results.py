"""What a run leaves in `--output_dir`, written so that a killed run never looks finished, and `RunResult`, the one
typed record of `results.json` that every reader (model card, report, figures, Space, scripts) goes through.

The model files are written to a temporary folder and renamed into place; `results.json` is written last,
also by rename, so its presence means the run completed.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .errors import MedftError

RESULTS_FILE = "results.json"
MODEL_FILES = ("config.json", "model.safetensors")  # what save_pretrained writes for a timm model
# A finished run's own files: its model, record, model card and figures.
RUN_FILES = (*MODEL_FILES, RESULTS_FILE, "README.md", "*.png")
# A study's successive-halving runs (short schedules that rank settings) live under this folder of its output; they
# chose the settings but are not results of the study.
RUNGS_FOLDER = "rungs"
# The metric registry: every split's headline metrics (name -> display name), in the order tables show them.
METRICS = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "macro_f1": "Macro F1", "auroc": "AUROC"}
CALIBRATION = {"ece": "ECE (top-label, 15 equal-width bins)", "brier": "Brier score"}
Metrics = dict[str, Any]  # one split's output of the metric module: METRICS, CALIBRATION, per-class, intervals...


@dataclass
class RunResult:
    """One finished run, as `results.json` holds it. Fields added later have defaults, so older runs still load."""

    strategy: str
    model: str
    dataset: str
    architecture: str
    class_names: list[str]
    strategy_config: dict[str, Any]
    learning_rate: float
    num_train_epochs: float
    image_size: int
    seed: int
    validation: Metrics
    test: Metrics | None
    history: list[dict[str, Any]]
    train_runtime_s: float
    environment: dict[str, Any]
    dataset_config: str | None = None
    augmentation: str = "rrc"  # runs made before --augmentation used what is now called "rrc"
    class_weights: str = "none"
    # "decoded" (the image cache), "pil", "features" (cached-feature LP), or "features, then decoded" (the head-only
    # epochs of lpft or gradual unfreezing on stored features)
    data_pipeline: str = "pil"
    split_settings: dict[str, Any] = field(default_factory=dict)  # what chose the rows of each split
    modality: str | None = None
    dataset_id: str | None = None
    base_model_id: str | None = None
    base_model_license: str | None = None
    validation_source: str = "validation"
    num_examples: dict[str, int] = field(default_factory=dict)
    mixed_precision: str = "no"
    # the model's memory format in training and evaluation (--channels_last); --cache_features' feature pass feeds
    # channels-last images whatever it says
    channels_last: bool = False
    positive_class: str | None = None
    best_checkpoint: str | None = None
    strategy_state: dict[str, Any] = field(default_factory=dict)
    # per test image: the label and the class probabilities (metrics.per_image_outputs), for recomputing anything
    test_outputs: dict[str, list] | None = None
    pushed_to: str | None = None
    # set by medft-select on its final runs: how this configuration was chosen (trials, budget, reason)
    selection: dict[str, Any] | None = None
    # set when the model was trained in another run folder (path relative to this one) and tested here, after the
    # fact (evaluation.evaluate_finished_run: medft-select's first final run is its chosen trial's run)
    trained_in: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MedftError(f"{RESULTS_FILE} has unknown fields {unknown}: written by another tool or version?")
        try:
            return cls(**data)
        except TypeError as error:
            raise MedftError(f"{RESULTS_FILE} is incomplete ({error}).") from error

    @classmethod
    def load(cls, path: str | Path) -> RunResult:
        """From a run folder or its `results.json`."""
        path = Path(path)
        return cls.from_dict(json.loads((path / RESULTS_FILE if path.is_dir() else path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, output_dir: str | Path) -> None:
        write_json_atomic(Path(output_dir) / RESULTS_FILE, self.to_dict())

    @property
    def split(self) -> str:
        """The split the headline metrics come from: test when there is one."""
        return "test" if self.test else "validation"

    @property
    def metrics(self) -> Metrics:
        return self.test or self.validation

    @property
    def dataset_name(self) -> str:
        return Path(self.dataset).name

    def curve(self, key: str, metric: str | None = None) -> list[float]:
        """Per epoch: a history value (`train_loss`, `learning_rate`, `trainable_parameters`), or with `metric`
        a validation metric; NaN where an epoch lacks it."""
        rows = [row.get(key) if metric is None else (row.get(key) or {}).get(metric) for row in self.history]
        return [float("nan") if value is None else value for value in rows]

    @property
    def epochs(self) -> list[int]:
        return [row["epoch"] for row in self.history]


def write_text_atomic(path: str | Path, text: str) -> None:
    """A reader (another worker, a rerun after a kill) sees the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    Path(handle.name).replace(path)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True))


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


def run_files(output_dir: str | Path) -> list[Path]:
    """A finished run's own files in `output_dir` (RUN_FILES): what `medft-push model` publishes."""
    return sorted(
        file
        for file in Path(output_dir).iterdir()
        if file.is_file() and any(fnmatch.fnmatch(file.name, pattern) for pattern in RUN_FILES)
    )


def discard_finished_run(output_dir: str | Path) -> None:
    """Remove a finished run's files (--overwrite_output_dir), `results.json` first: from then on nothing takes the
    folder for a finished run, and no file of the old run is left beside the new one's (a model, with
    --save_model false)."""
    (Path(output_dir) / RESULTS_FILE).unlink(missing_ok=True)
    for file in run_files(output_dir):
        file.unlink()


def ranked_settings(mean_validation: dict[str, float]) -> list[str]:
    """Settings best first by mean validation score; ties go to the name that sorts first as text (not to the
    grid's order), and a setting without a score (its runs failed) comes last. The one rule by which the study
    runner and the report choose."""
    return sorted(mean_validation, key=lambda name: (math.isnan(mean_validation[name]), -mean_validation[name], name))


def epoch_history(log_history: list[dict[str, Any]], trainable_per_epoch: dict[int, int]) -> list[dict[str, Any]]:
    """One row per epoch from the Trainer's log: training loss and learning rate (the last logged in that epoch),
    validation metrics, and the number of trainable parameters during that epoch."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        # A log at epoch 1.33 (logging by steps) or 2.5 (a fractional --num_train_epochs) belongs to the 2nd or 3rd
        # epoch; an epoch's end is logged exactly (k/k steps == 1.0), the margin only absorbs float noise.
        epoch = max(math.ceil(entry["epoch"] - 1e-9) - 1, 0)
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


def environment(device: torch.device) -> dict[str, Any]:
    """The hardware and software a run used, for reports and model cards. `device` is the one the run trained on: a
    `--use_cpu` run on a machine with a GPU ran on the CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = f"CPU ({os.cpu_count()} cores)"
    else:
        name = str(device)
    return {
        "device": name,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
