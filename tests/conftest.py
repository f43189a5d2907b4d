"""Shared fixtures: a tiny timm model and a tiny image dataset, both on disk in Hub layout, made offline."""

from __future__ import annotations

import os

# The Hub is unreachable in CI; huggingface_hub reads these when it is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import torch
import transformers
from PIL import Image
from timm.models import save_for_hf
from transformers import TrainerCallback

from medft_hf.cache import image_datasets
from medft_hf.data import Preprocessing, load_splits
from medft_hf.modeling import BlockLayout, load_model
from medft_hf.rng import determinism_restored
from medft_hf.strategies import STRATEGIES, build_strategy
from medft_hf.train import MedftTrainingArguments
from medft_hf.trainer import StrategyTrainer

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CLASS_NAMES = ["benign", "malignant", "normal"]


def requires_shared(*parts: str):
    path = SHARED.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (real data and weights live in ../shared)")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=requires_cuda)])
def device(request) -> Iterator[dict[str, bool]]:
    """Training arguments for the CPU, or for the GPU with deterministic kernels (train.py's `--full_determinism`,
    which the README promises makes GPU runs repeatable). Deterministic mode is process-wide: a Trainer built
    outside `train.run` leaves it on, so it is undone afterwards."""
    with determinism_restored():
        yield {"use_cpu": True} if request.param == "cpu" else {"use_cpu": False, "full_determinism": True}


def make_images(count: int, seed: int, size: int = 32) -> tuple[list[Image.Image], list[int]]:
    """Images whose class is visible (a bright square in a class-specific corner), on noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(count):
        label = index % len(CLASS_NAMES)
        pixels = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
        corner = [(0, 0), (0, size // 2), (size // 2, 0)][label]
        pixels[corner[0] : corner[0] + size // 2, corner[1] : corner[1] + size // 2] += 150
        images.append(Image.fromarray(pixels))
        labels.append(label)
    return images, labels


def write_hub_dataset(root: Path, splits: dict[str, int], features: datasets.Features | None = None) -> Path:
    """A dataset folder in Hub layout (parquet shards under data/), like ../shared/data/*."""
    features = features or datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)}
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    for seed, (split, count) in enumerate(splits.items()):
        images, labels = make_images(count, seed)
        data = dict(zip(features, [images, labels], strict=True))
        datasets.Dataset.from_dict(data, features=features).to_parquet(
            root / "data" / f"{split}-00000-of-00001.parquet"
        )
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_hub_dataset(tmp_path_factory.mktemp("tiny_dataset"), {"train": 48, "validation": 12, "test": 12})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """timm's `test_efficientnet` (100k parameters, BatchNorm, 6 blocks) saved as a timm Hub repo."""
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=1000)
    directory = tmp_path_factory.mktemp("tiny_model")
    save_for_hf(model, directory, safe_serialization=True)
    return directory


class Snapshots(TrainerCallback):
    """Copies of every parameter and buffer at the end of each epoch (index 0: before training)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.states = [self.copy()]

    def copy(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}

    def on_epoch_end(self, args, state, control, **kwargs):
        self.states.append(self.copy())


def make_trainer(
    strategy: str,
    model_dir: Path,
    dataset_dir: Path,
    output_dir: Path,
    epochs: int = 2,
    image_size: int = 32,
    cached: bool = False,
    loss: Callable | None = None,
    **flags,
) -> tuple[StrategyTrainer, Snapshots]:
    """A StrategyTrainer built with the library's own pieces, exactly as train.py builds it: training rows through
    the PIL pipeline (decoded and augmented on every read), or read from the decoded-image cache (`cached`, the
    default of train.py)."""
    transformers.set_seed(0)
    splits = load_splits(str(dataset_dir), seed=0)
    model = load_model(str(model_dir), splits.class_names)
    preprocessing = Preprocessing.for_model(model.timm_model, image_size)
    settings = {
        "output_dir": str(output_dir),
        "num_train_epochs": epochs,
        "per_device_train_batch_size": 16,
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "eval_strategy": "no",
        "use_cpu": True,
        "seed": 0,
    }
    settings.update({k: flags.pop(k) for k in list(flags) if hasattr(MedftTrainingArguments, k)})
    args = MedftTrainingArguments(**settings)
    config_class = STRATEGIES[strategy].config_class
    built = build_strategy(strategy, config_class(**flags), BlockLayout.from_model(model), epochs)
    model = built.prepare_model(model)
    trainer = StrategyTrainer(
        model=model,
        args=args,
        train_dataset=image_datasets(splits, preprocessing, seed=0, cached=cached)[0],
        compute_loss_func=loss,
        strategy=built,
    )
    snapshots = Snapshots(model)
    trainer.add_callback(snapshots)
    return trainer, snapshots
