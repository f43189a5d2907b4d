"""Datasets: any HF image-classification dataset (Hub id, Hub-layout folder or imagefolder) as train/val/test.

Columns are found from the features, a missing validation split is carved from train (stratified and
seeded), and images are made RGB and preprocessed with the backbone's own timm data config.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib import resources
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from .errors import MedftError
from .images import to_rgb
from .rng import derived_seed, isolated_rng

VALIDATION_NAMES = ("validation", "valid", "val", "dev")
TEST_NAMES = ("test", "testing")
logger = logging.getLogger(__name__)


def bundled_dataset_path() -> str:
    """BreastMNIST (MedMNIST v2, CC BY 4.0), shipped so the default command needs no download."""
    return str(resources.files("medft_hf.bundled") / "breastmnist")


@dataclass
class ImageClassificationSplits:
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    image_column: str
    label_column: str
    class_names: list[str]
    validation_source: str  # "validation" (given) or "train" (carved out of it)


def load_splits(
    dataset: str | None,
    dataset_config: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    val_fraction: float = 0.1,
    max_train_samples: int | None = None,
    seed: int = 42,
    min_validation_size: int = 0,
    max_eval_samples: int | None = None,
) -> ImageClassificationSplits:
    """Load a dataset and return checked train / validation / test splits with one ClassLabel column.

    A validation split under `min_validation_size` rows is not used: validation is carved from train as if there
    were none (a 16-image split would choose epochs and settings by noise). `max_eval_samples` caps validation with
    a stratified, seeded subset (it is evaluated every epoch); test is always whole (it is evaluated once).
    """
    if min_validation_size < 0:
        raise MedftError(f"--min_validation_size {min_validation_size}: must be >= 0.")
    if max_eval_samples is not None and max_eval_samples < 1:
        raise MedftError(f"--max_eval_samples {max_eval_samples}: must be >= 1 (or unset for the whole split).")
    source = dataset or bundled_dataset_path()
    try:
        loaded = datasets.load_dataset(source, dataset_config)
    except FileNotFoundError as error:
        raise MedftError(
            f"--dataset {source}: not found locally or on the Hugging Face Hub ({error}). Pass a Hub dataset "
            "id, a folder in Hub layout, or an imagefolder (one sub-folder per class)."
        ) from error
    except (ConnectionError, OSError) as error:
        raise MedftError(
            f"--dataset {source}: could not be loaded ({error}). If the Hub is unreachable, pass a local "
            "folder (Hub layout or imagefolder) or set HF_DATASETS_OFFLINE=1 to use the cache."
        ) from error
    except ValueError as error:
        empty = re.search(r'Instruction "(\w+)" corresponds to no data', str(error))
        if empty:
            raise MedftError(f"--dataset {source}: the {empty[1]} split is empty. Give it rows or drop it.") from error
        hint = " Pass --dataset_config NAME." if "config" in str(error).lower() else ""
        raise MedftError(f"--dataset {source}: {error}{hint}") from error
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    if "train" not in loaded:
        raise MedftError(f"--dataset {source}: no 'train' split (found {sorted(loaded)}).")

    train = loaded["train"]
    image_column = _find_image_column(train.features, image_column, source)
    label_column = _find_label_column(train.features, label_column, image_column, source)
    loaded = _as_class_label(loaded, label_column)
    class_names = list(loaded["train"].features[label_column].names)

    validation_name = next((name for name in VALIDATION_NAMES if name in loaded), None)
    test_name = next((name for name in TEST_NAMES if name in loaded), None)
    train = loaded["train"]
    if validation_name is not None and len(loaded[validation_name]) < min_validation_size:
        logger.warning(
            "%s: the %s split has %d rows, fewer than --min_validation_size %d; it is not used, and validation is "
            "carved from train instead (--val_fraction %g).",
            source,
            validation_name,
            len(loaded[validation_name]),
            min_validation_size,
            val_fraction,
        )
        validation_name = None
    if validation_name is None:
        if not 0 < val_fraction < 1:
            raise MedftError(f"--val_fraction {val_fraction}: must be between 0 and 1.")
        hint = "Raise --val_fraction or give the dataset a validation split."
        train, validation = _stratified_split(train, val_fraction, label_column, seed, f"{source}: validation", hint)
    else:
        validation = loaded[validation_name]
    if max_eval_samples is not None and max_eval_samples < len(validation):
        hint = "Raise --max_eval_samples, or leave it unset to evaluate the whole split."
        _, validation = _stratified_split(
            validation, max_eval_samples, label_column, seed, f"{source}: --max_eval_samples", hint
        )
    if max_train_samples is not None and max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(max_train_samples))

    splits = ImageClassificationSplits(
        train=train,
        validation=validation,
        test=loaded[test_name] if test_name else None,
        image_column=image_column,
        label_column=label_column,
        class_names=class_names,
        validation_source="validation" if validation_name else "train",
    )
    _check_labels(splits, source)
    return splits


def _stratified_split(
    split: datasets.Dataset, size: float | int, label_column: str, seed: int, what: str, hint: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(rest, part): `part` holds `size` rows (a share if a float), drawn per class and seeded."""
    try:
        parts = split.train_test_split(test_size=size, stratify_by_column=label_column, seed=seed)
    except ValueError as error:
        raise MedftError(f"{what}: cannot draw a stratified split ({error}). {hint}") from error
    return parts["train"], parts["test"]


def _find_image_column(features: datasets.Features, requested: str | None, source: str) -> str:
    if requested is not None:
        if requested not in features:
            raise MedftError(f"--image_column {requested}: not in {source} (columns: {list(features)}).")
        return requested
    found = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if not found:
        raise MedftError(
            f"{source}: no image column (columns: {dict(features)}). Pass --image_column NAME, or cast "
            "the column to datasets.Image()."
        )
    return found[0]


def _find_label_column(features: datasets.Features, requested: str | None, image_column: str, source: str) -> str:
    if requested is not None:
        if requested not in features:
            raise MedftError(f"--label_column {requested}: not in {source} (columns: {list(features)}).")
        return requested
    class_labels = [name for name, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if class_labels:
        return class_labels[0]
    candidates = [
        name
        for name, feature in features.items()
        if name != image_column
        and isinstance(feature, datasets.Value)
        and (feature.dtype in ("string", "bool") or feature.dtype.startswith(("int", "uint")))
    ]
    named = [name for name in ("label", "labels", "class", "target") if name in candidates]
    if named or len(candidates) == 1:
        return (named or candidates)[0]
    raise MedftError(
        f"{source}: no label column (columns: {list(features)}). Pass --label_column NAME "
        "(a ClassLabel, int or string column)."
    )


def _as_class_label(loaded: datasets.DatasetDict, label_column: str) -> datasets.DatasetDict:
    """Map an int or string label column to a ClassLabel over all splits, so every split agrees on ids."""
    feature = loaded["train"].features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return loaded
    dtype = getattr(feature, "dtype", None)
    values = sorted({v for split in loaded.values() for v in split.unique(label_column)})
    if dtype == "string":
        names = [str(v) for v in values]
        encode = {name: i for i, name in enumerate(names)}
        loaded = loaded.map(lambda row: {label_column: encode[row[label_column]]})
    elif dtype == "bool":
        names = ["False", "True"]
        loaded = loaded.map(lambda row: {label_column: int(row[label_column])})
    elif dtype is not None and dtype.startswith(("int", "uint")):
        if values and values[0] < 0:
            raise MedftError(f"label column {label_column!r} has negative labels ({values[0]}).")
        names = [str(i) for i in range(int(values[-1]) + 1)] if values else []
    else:
        raise MedftError(
            f"label column {label_column!r} has type {feature}; it must be a ClassLabel, int or string column."
        )
    return loaded.cast_column(label_column, datasets.ClassLabel(names=names))


def _check_labels(splits: ImageClassificationSplits, source: str) -> None:
    num_classes = len(splits.class_names)
    if num_classes < 2:
        raise MedftError(f"{source}: needs at least two classes, found {splits.class_names}.")
    named = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    for name, split in named.items():
        if split is None:
            continue
        if len(split) == 0:
            raise MedftError(f"{source}: the {name} split is empty. Give it rows or drop it.")
        labels = np.asarray(split[splits.label_column])
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            raise MedftError(
                f"{source}: {name} row {int(bad[0])} has label {int(labels[bad[0]])}, outside 0..{num_classes - 1} "
                f"({bad.size} such rows). Fix or drop those rows."
            )
    counts = np.bincount(np.asarray(splits.train[splits.label_column]), minlength=num_classes)
    missing = [splits.class_names[i] for i in np.flatnonzero(counts == 0)]
    if missing:
        raise MedftError(
            f"{source}: no training image for class(es) {missing}. Every class needs training images; "
            "check the split or raise --max_train_samples."
        )


class ImageClassificationDataset(torch.utils.data.Dataset):
    """Rows of an HF split as `{"pixel_values", "labels"}`; a corrupt image is reported with its row.

    With a `seed`, the random augmentation of row i in epoch e is drawn from its own RNG seeded by
    (seed, e, i): the same whatever the data order, the number of workers or processes, or a resume mid-epoch.
    """

    def __init__(
        self,
        split: datasets.Dataset,
        image_column: str,
        label_column: str,
        transform,
        name: str,
        seed: int | None = None,
    ):
        self.split = split.select_columns([image_column, label_column])
        self.image_column, self.label_column = image_column, label_column
        self.transform, self.name, self.seed = transform, name, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with undecodable_rows(self.name, index):
            row = self.split[index]
            image = to_rgb(row[self.image_column])
        seeded = nullcontext() if self.seed is None else isolated_rng(derived_seed(self.seed, self.epoch, index))
        with seeded:
            pixel_values = self.transform(image)
        return {"pixel_values": pixel_values, "labels": row[self.label_column]}


@contextmanager
def undecodable_rows(split_name: str, index: int) -> Iterator[None]:
    """PIL's errors for undecodable bytes, as one message naming the split's row and the fix."""
    try:
        yield
    except (OSError, ValueError, SyntaxError) as error:
        message = f"{split_name} row {index}: the image cannot be decoded ({error}). Fix or drop that row."
        raise MedftError(message) from error


# Training augmentations, by name (`--augmentation`). None of them touches intensity or colour: in a medical
# image those carry meaning. Each is a random resized crop (share of the area, aspect-ratio range) and a
# horizontal flip; "none" trains on the evaluation pixels.
AUGMENTATIONS: dict[str, dict[str, Any] | None] = {
    "light": {"scale": (0.85, 1.0), "ratio": (1.0, 1.0), "hflip": 0.5},
    "rrc": {"scale": (0.5, 1.0), "ratio": (3 / 4, 4 / 3), "hflip": 0.5},
    "none": None,
}
# ours, from issue 10's held-out measurement (rrc cost 0.03-0.07 balanced accuracy at 64 px / 6 epochs); not yet
# compared on validation here (docs/results/defaults/README.md says why)
DEFAULT_AUGMENTATION = "light"


@dataclass(frozen=True)
class Preprocessing:
    """How images reach the backbone: its pretrained data config (mean, std, interpolation) at our size, and the
    training augmentation. One record for both pipelines (PIL transforms, or the decoded-image cache)."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    augmentation: str = DEFAULT_AUGMENTATION

    @classmethod
    def for_model(cls, timm_model: torch.nn.Module, image_size: int, augmentation: str = DEFAULT_AUGMENTATION):
        if augmentation not in AUGMENTATIONS:
            raise MedftError(f"--augmentation {augmentation}: choose one of {', '.join(AUGMENTATIONS)}.")
        config = resolve_data_config(model=timm_model)
        return cls(image_size, tuple(config["mean"]), tuple(config["std"]), config["interpolation"], augmentation)

    @property
    def recipe(self) -> dict[str, Any] | None:
        return AUGMENTATIONS[self.augmentation]

    def _timm_config(self) -> dict[str, Any]:
        return {
            "input_size": (3, self.size, self.size),
            "crop_pct": 1.0,  # the whole image, resized: what record_input_config tells pipeline() to do
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
        }

    def decode_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image to the uint8 CHW tensor evaluation sees before normalisation: the whole image resized (shorter
        side to `size`, centre crop), as timm's evaluation transform does it."""
        return create_transform(**self._timm_config(), is_training=False, use_prefetcher=True)

    def pil_transforms(self) -> tuple[Callable, Callable]:
        """timm's train and eval transforms (PIL image to normalised float tensor), for the uncached pipeline."""
        evaluation = create_transform(**self._timm_config(), is_training=False)
        if self.recipe is None:
            return evaluation, evaluation
        return create_transform(**self._timm_config(), is_training=True, **self.recipe, color_jitter=None), evaluation
