"""What a study grid will cost before it runs (`medft-benchmark <grid> --dry-run`): GPU-hours from the images per
second its grid file states for each backbone, and disk from each backbone's parameter count.

GPU-hours of one cell = (epochs × train images / train images/s
                         + ((epochs + 1) × validation images + test images) / evaluation images/s) / 3600

(validation is evaluated after every epoch and predicted once more by the chosen model; test once). Every cell is
costed as full fine-tuning, an upper bound for the strategies that freeze part of the backbone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import defaults
from .errors import MedftError
from .modeling import architecture_parameter_count

# A saved model is float32 (4 bytes a parameter). A running cell holds at most two checkpoints (the best epoch's
# and the latest), each with the weights and AdamW's two moments: 2 × 3 copies of the weights.
BYTES_PER_PARAMETER = 4
CHECKPOINT_COPIES = 6
GB = 1e9


@dataclass(frozen=True)
class Throughput:
    """Images per second of one backbone on the grid's hardware, at its image size and precision."""

    train: float  # forward, backward and optimizer step
    eval: float  # forward only


@dataclass(frozen=True)
class CostModel:
    """The grid file's `throughput` key: images/s per backbone and whether they were measured or assumed."""

    images_per_second: dict[str, Throughput]
    measured: bool
    source: str

    @classmethod
    def from_spec(cls, spec: dict[str, Any], backbones: Iterable[str]) -> CostModel:
        """`{measured: bool, source: text, images_per_second: {backbone: {train: x, eval: y}}}`, checked."""
        example = "e.g. {measured: false, source: ..., images_per_second: {resnet50: {train: 800, eval: 2400}}}"
        rates = spec.get("images_per_second") or {}
        unknown = set(spec) - {"measured", "source", "images_per_second"}
        problems = [f"unknown keys {sorted(unknown)}"] if unknown else []
        if not isinstance(spec.get("measured"), bool) or not spec.get("source"):
            problems.append("`measured` (true/false) and `source` (where the figures come from) are required")
        problems += [f"no images_per_second for backbone {name!r}" for name in backbones if name not in rates]
        parsed = {}
        for name, rate in rates.items():
            if not (isinstance(rate, dict) and set(rate) == {"train", "eval"} and _positive(rate.values())):
                problems.append(f"images_per_second of {name!r} must be {{train: number > 0, eval: number > 0}}")
            else:
                parsed[name] = Throughput(float(rate["train"]), float(rate["eval"]))
        if problems:
            raise MedftError("throughput: " + "; ".join(problems) + f" ({example}).")
        return cls(parsed, spec["measured"], spec["source"])


def _positive(values: Iterable[Any]) -> bool:
    return all(isinstance(value, int | float) and not isinstance(value, bool) and value > 0 for value in values)


def split_sizes(num_rows: dict[str, int], flags: dict[str, Any]) -> tuple[int, int, int]:
    """(train, validation, test) images of one cell, from the dataset's split sizes and the cell's train.py flags,
    by `data.load_splits`'s rules: a missing or too small validation split is carved from train, validation is
    capped by `max_eval_samples`, train by `max_train_samples`; test is whole, or none with `skip_test` (a search
    rung)."""
    train, validation, test = num_rows["train"], num_rows.get("validation", 0), num_rows.get("test", 0)
    if validation == 0 or validation < flags.get("min_validation_size", 0):
        validation = round(train * flags.get("val_fraction", defaults.VAL_FRACTION))
        train -= validation
    return (
        min(train, flags.get("max_train_samples") or train),
        min(validation, flags.get("max_eval_samples") or validation),
        0 if flags.get("skip_test") else test,
    )


def cell_gpu_hours(sizes: tuple[int, int, int], epochs: float, rate: Throughput) -> float:
    train, validation, test = sizes
    return (epochs * train / rate.train + ((epochs + 1) * validation + test) / rate.eval) / 3600


@dataclass
class Estimate:
    """A grid's cost, per backbone: cells, GPU-hours, and the weights its cells would keep and do keep."""

    cells: dict[str, int]
    gpu_hours: dict[str, float]
    weight_bytes: dict[str, float]  # if every cell kept its model
    kept_bytes: dict[str, float]  # those of cells with save_model (the default)
    checkpoint_bytes: dict[str, float]  # the most one running cell of this backbone holds at once
    model: CostModel

    def lines(self) -> list[str]:
        label = "measured" if self.model.measured else "ASSUMED (placeholders, not measured)"
        lines = [
            f"cost estimate, images/s {label}: {self.model.source}",
            f"{'backbone':<22} {'cells':>6} {'train img/s':>12} {'eval img/s':>11} {'GPU-hours':>10} "
            f"{'weights GB':>11} {'kept GB':>8}",
        ]
        for name, count in self.cells.items():
            rate = self.model.images_per_second[name]
            lines.append(
                f"{name:<22} {count:>6} {rate.train:>12g} {rate.eval:>11g} {self.gpu_hours[name]:>10.1f} "
                f"{self.weight_bytes[name] / GB:>11.1f} {self.kept_bytes[name] / GB:>8.1f}"
            )
        total_hours = sum(self.gpu_hours.values())
        lines += [
            f"total: {sum(self.cells.values())} cells, {total_hours:.1f} GPU-hours"
            + (" (assumed images/s)" if not self.model.measured else ""),
            f"disk: {sum(self.kept_bytes.values()) / GB:.1f} GB of model weights kept (cells with save_model false "
            f"keep none; all kept: {sum(self.weight_bytes.values()) / GB:.1f} GB), plus up to "
            f"{max(self.checkpoint_bytes.values(), default=0) / GB:.1f} GB of checkpoints per cell running at once "
            "(removed when the cell finishes), plus results.json and figures (well under 1 MB a cell)",
            "GPU-hours per cell = (epochs × train / train img/s + ((epochs + 1) × validation + test) / eval img/s) "
            "/ 3600; every cell costed as full fine-tuning",
        ]
        return lines


def estimate(cells: Iterable[tuple[str, str, dict[str, Any], dict[str, int]]], model: CostModel) -> Estimate:
    """`cells`: (backbone name, model id or folder, train.py flags, the dataset's split sizes) for each cell."""
    count: dict[str, int] = defaultdict(int)
    hours: dict[str, float] = defaultdict(float)
    all_weights: dict[str, float] = defaultdict(float)
    kept: dict[str, float] = defaultdict(float)
    checkpoints: dict[str, float] = {}
    weights: dict[str, float] = {}
    for backbone, model_id, flags, num_rows in cells:
        if model_id not in weights:
            weights[model_id] = architecture_parameter_count(model_id) * BYTES_PER_PARAMETER
        sizes = split_sizes(num_rows, flags)
        count[backbone] += 1
        epochs = flags.get("num_train_epochs", defaults.NUM_TRAIN_EPOCHS)
        hours[backbone] += cell_gpu_hours(sizes, epochs, model.images_per_second[backbone])
        all_weights[backbone] += weights[model_id]
        kept[backbone] += weights[model_id] if flags.get("save_model", defaults.SAVE_MODEL) else 0.0
        checkpoints[backbone] = CHECKPOINT_COPIES * weights[model_id]
    return Estimate(dict(count), dict(hours), dict(all_weights), dict(kept), checkpoints, model)
