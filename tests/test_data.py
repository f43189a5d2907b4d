"""Data handling: column detection, carved validation splits, image modes, and clear errors on bad data."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
import torch
from conftest import CLASS_NAMES, make_images, write_hub_dataset
from PIL import Image

from medft_hf.data import ImageClassificationDataset, load_splits
from medft_hf.errors import MedftError
from medft_hf.images import to_rgb
from medft_hf.metrics import compute_classification_metrics


def test_columns_are_detected_and_string_labels_become_class_labels(tmp_path):
    features = datasets.Features({"scan": datasets.Image(), "diagnosis": datasets.Value("string")})
    root = tmp_path / "strings"
    (root / "data").mkdir(parents=True)
    images, labels = make_images(30, seed=0)
    names = [CLASS_NAMES[i] for i in labels]
    datasets.Dataset.from_dict({"scan": images, "diagnosis": names}, features=features).to_parquet(
        root / "data" / "train-00000-of-00001.parquet"
    )
    splits = load_splits(str(root), val_fraction=0.2, seed=0)
    assert (splits.image_column, splits.label_column) == ("scan", "diagnosis")
    assert splits.class_names == sorted(CLASS_NAMES)
    assert isinstance(splits.train.features["diagnosis"], datasets.ClassLabel)


def test_a_missing_validation_split_is_carved_stratified_and_seeded(tmp_path):
    root = write_hub_dataset(tmp_path / "no_val", {"train": 60, "test": 9})
    first = load_splits(str(root), val_fraction=0.2, seed=3)
    again = load_splits(str(root), val_fraction=0.2, seed=3)
    other = load_splits(str(root), val_fraction=0.2, seed=4)
    assert first.validation_source == "train"
    assert len(first.validation) == 12 and len(first.train) == 48
    assert np.bincount(first.validation["label"]).tolist() == [4, 4, 4], "stratified"
    assert first.validation["image"][0].tobytes() == again.validation["image"][0].tobytes(), "seeded"
    assert first.validation["label"] != other.validation["label"] or first.train["label"] != other.train["label"]


def test_max_train_samples_subsamples_with_the_seed(tiny_dataset):
    a = load_splits(str(tiny_dataset), max_train_samples=10, seed=1)
    b = load_splits(str(tiny_dataset), max_train_samples=10, seed=1)
    assert len(a.train) == 10
    assert [img.tobytes() for img in a.train["image"]] == [img.tobytes() for img in b.train["image"]]


@pytest.mark.parametrize(
    ("mode", "array"),
    [
        ("L", np.arange(256, dtype=np.uint8).reshape(16, 16)),
        ("RGBA", np.full((16, 16, 4), 200, dtype=np.uint8)),
        ("I;16", (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)),
    ],
)
def test_any_image_mode_becomes_8_bit_rgb(mode, array):
    image = Image.fromarray(array, mode=mode) if mode != "I;16" else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    loaded = Image.open(buffer)
    rgb = to_rgb(loaded)
    assert rgb.mode == "RGB" and rgb.size == (16, 16)
    pixels = np.asarray(rgb)
    if mode != "RGBA":
        assert pixels.min() == 0 and pixels.max() == 255, "16-bit range is scaled, not clipped"


def _dataset_with(tmp_path, name: str, rows: dict) -> str:
    root = tmp_path / name
    (root / "data").mkdir(parents=True)
    for split, table in rows.items():
        table.to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return str(root)


def _table(images, labels, names=CLASS_NAMES):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def test_no_image_column(tmp_path):
    table = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    with pytest.raises(MedftError, match=r"no image column.*--image_column"):
        load_splits(_dataset_with(tmp_path, "noimg", {"train": table}))


def test_no_label_column(tmp_path):
    images, _ = make_images(4, 0)
    table = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    with pytest.raises(MedftError, match=r"no label column.*--label_column"):
        load_splits(_dataset_with(tmp_path, "nolabel", {"train": table}))


def test_labels_out_of_range_name_the_row(tmp_path):
    images, labels = make_images(9, 0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    train = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    bad = datasets.Dataset.from_dict({"image": images[:3], "label": [0, -1, 2]}, features=features)
    with pytest.raises(MedftError, match="validation row 1 has label -1"):
        load_splits(_dataset_with(tmp_path, "range", {"train": train, "validation": bad}))


def test_a_class_with_no_training_image(tmp_path):
    images, labels = make_images(9, 0)
    keep = [i for i, label in enumerate(labels) if label != 2]
    train = _table([images[i] for i in keep], [labels[i] for i in keep])
    with pytest.raises(MedftError, match=r"no training image for class\(es\) \['normal'\]"):
        load_splits(_dataset_with(tmp_path, "missing", {"train": train, "validation": _table(images, labels)}))


def test_an_empty_split(tmp_path):
    images, labels = make_images(9, 0)
    with pytest.raises(MedftError, match="the test split is empty"):
        load_splits(_dataset_with(tmp_path, "empty", {"train": _table(images, labels), "test": _table([], [])}))


def test_a_corrupt_image_names_its_row(tmp_path):
    images, labels = make_images(6, 0)
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    encoded[4] = {"bytes": b"not an image at all", "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    split = datasets.Dataset.from_dict({"image": encoded, "label": labels}, features=features)
    dataset = ImageClassificationDataset(split, "image", "label", lambda img: torch.zeros(1), "train")
    dataset[3]
    with pytest.raises(MedftError, match="train row 4: the image cannot be decoded"):
        dataset[4]


def test_metrics_match_an_independent_computation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=200)
    logits = rng.normal(size=(200, 3)) + 1.5 * np.eye(3)[labels]
    result = compute_classification_metrics(logits, labels, per_class=True)
    predictions = logits.argmax(1)
    recalls = [(predictions[labels == k] == k).mean() for k in range(3)]
    precisions = [(labels[predictions == k] == k).mean() for k in range(3)]
    f1 = [2 * p * r / (p + r) for p, r in zip(precisions, recalls, strict=True)]
    assert result["accuracy"] == pytest.approx((predictions == labels).mean())
    assert result["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert result["macro_f1"] == pytest.approx(np.mean(f1))
    # AUROC of class k vs rest = P(score of a positive > score of a negative), by counting pairs.
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    aucs = []
    for k in range(3):
        pos, neg = probabilities[labels == k, k], probabilities[labels != k, k]
        aucs.append(
            ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
        )
    assert result["auroc"] == pytest.approx(np.mean(aucs))
    assert np.asarray(result["confusion_matrix"]).sum() == 200


def test_an_imagefolder_loads_with_class_names_from_its_folders(tmp_path):
    images, labels = make_images(18, seed=0)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / "folder" / "train" / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        image.convert("L").save(folder / f"{index}.png")
    splits = load_splits(str(tmp_path / "folder"), val_fraction=1 / 3, seed=0)
    assert splits.class_names == CLASS_NAMES
    assert splits.validation_source == "train"
    assert len(splits.validation) == 6


def test_a_bool_label_column_becomes_two_classes(tmp_path):
    images, labels = make_images(12, seed=0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("bool")})
    root = tmp_path / "bool"
    (root / "data").mkdir(parents=True)
    flags = [label == 0 for label in labels]
    datasets.Dataset.from_dict({"image": images, "label": flags}, features=features).to_parquet(
        root / "data" / "train-00000-of-00001.parquet"
    )
    splits = load_splits(str(root), val_fraction=0.25, seed=0)
    assert splits.class_names == ["False", "True"]
    assert sorted(set(splits.train["label"])) == [0, 1]


def test_a_too_small_validation_split_is_replaced_by_one_carved_from_train(tmp_path, caplog):
    root = write_hub_dataset(tmp_path / "tiny_val", {"train": 60, "validation": 6, "test": 9})
    given = load_splits(str(root), seed=3, min_validation_size=6)
    assert given.validation_source == "validation" and len(given.validation) == 6, "at the minimum: kept"
    with caplog.at_level("WARNING", logger="medft_hf.data"):
        carved = load_splits(str(root), val_fraction=0.2, seed=3, min_validation_size=7)
    assert "the validation split has 6 rows, fewer than --min_validation_size 7" in caplog.text
    assert carved.validation_source == "train"
    assert len(carved.validation) == 12 and len(carved.train) == 48
    assert np.bincount(carved.validation["label"]).tolist() == [4, 4, 4], "stratified"
    missing = write_hub_dataset(tmp_path / "no_val", {"train": 60, "test": 9})
    same = load_splits(str(missing), val_fraction=0.2, seed=3)
    assert carved.validation["image"][5].tobytes() == same.validation["image"][5].tobytes(), (
        "the same carve as for a dataset without a validation split"
    )


def test_max_eval_samples_subsamples_validation_stratified_and_leaves_test_whole(tmp_path):
    root = write_hub_dataset(tmp_path / "big_val", {"train": 30, "validation": 60, "test": 30})
    capped = load_splits(str(root), seed=1, max_eval_samples=9)
    again = load_splits(str(root), seed=1, max_eval_samples=9)
    assert len(capped.validation) == 9 and len(capped.test) == 30 and len(capped.train) == 30
    assert np.bincount(capped.validation["label"]).tolist() == [3, 3, 3], "stratified"
    assert [i.tobytes() for i in capped.validation["image"]] == [i.tobytes() for i in again.validation["image"]]
    assert len(load_splits(str(root), seed=1, max_eval_samples=100).validation) == 60, "a cap above the size"
    with pytest.raises(MedftError, match=r"--max_eval_samples.*Raise --max_eval_samples"):
        load_splits(str(root), seed=1, max_eval_samples=2)  # fewer rows than classes: no stratified subset
    with pytest.raises(MedftError, match=r"--max_eval_samples 0: must be >= 1"):
        load_splits(str(root), max_eval_samples=0)
    with pytest.raises(MedftError, match=r"--min_validation_size -1: must be >= 0"):
        load_splits(str(root), min_validation_size=-1)
