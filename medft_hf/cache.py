"""The fast paths: images decoded once and augmented as uint8 tensors; for epochs that train the head alone,
backbone features once.

Decoding (JPEG/PNG, RGB conversion, resizing) costs more than a small CNN's training step on a CPU and starves a
GPU. `decode_split` does it once per image into an Arrow file that `datasets` keys by the split's fingerprint and
the preprocessing, so a second run and every cell of a study read it back. Rows are read one at a time from the
memory-mapped file: a dataset larger than memory streams from disk. The cache takes 3 x size² bytes per image
(12 KiB at 64 px, 147 KiB at 224 px) in the datasets cache folder (`HF_DATASETS_CACHE`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import datasets
import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf
from transformers import TrainingArguments

from .data import ImageClassificationDataset, ImageClassificationSplits, Preprocessing, undecodable_rows
from .errors import MedftError
from .images import to_rgb
from .strategies import Strategy

# Part of every cache fingerprint: bump it when what `decode_split` stores changes.
CACHE_FORMAT = 1


def decode_split(
    split: datasets.Dataset,
    image_column: str,
    label_column: str,
    preprocessing: Preprocessing,
    name: str,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """The split as `pixels` (uint8 CHW bytes of the evaluation-resized image) and `labels`, decoded once."""
    transform = preprocessing.decode_transform()
    image_feature = datasets.Image()

    def decode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        pixels = []
        for index, value in zip(indices, batch[image_column], strict=True):
            with undecodable_rows(name, index):
                image = to_rgb(image_feature.decode_example(value))
            pixels.append(transform(image).numpy().tobytes())
        return {"pixels": pixels, "labels": batch[label_column]}

    raw = split.select_columns([image_column, label_column]).cast_column(image_column, datasets.Image(decode=False))
    key = [raw._fingerprint, preprocessing.size, preprocessing.interpolation, CACHE_FORMAT]
    return raw.map(
        decode,
        batched=True,
        with_indices=True,
        remove_columns=[image_column, label_column],
        features=datasets.Features({"pixels": datasets.Value("binary"), "labels": datasets.Value("int64")}),
        new_fingerprint=datasets.fingerprint.Hasher.hash(key),
        num_proc=num_proc or None,  # 0 workers: decode in this process
        desc=f"Decoding the {name} images once",
    )


def image_datasets(
    splits: ImageClassificationSplits,
    preprocessing: Preprocessing,
    seed: int,
    cached: bool = True,
    num_proc: int | None = None,
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
    """Train (augmented, seeded per row), validation and test rows: read from the decoded-image cache, or
    decoded and augmented with PIL on every read (`cached=False`)."""
    named = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    rows = {
        name: split_rows(splits, name, preprocessing, seed, cached, num_proc)
        for name, split in named.items()
        if split is not None
    }
    return rows["train"], rows["validation"], rows.get("test")


def split_rows(
    splits: ImageClassificationSplits,
    name: str,
    preprocessing: Preprocessing,
    seed: int = 0,
    cached: bool = True,
    num_proc: int | None = None,
) -> torch.utils.data.Dataset:
    """The rows of one split (`train` augmented, seeded per row by `seed`; the others as evaluation sees them)."""
    split = getattr(splits, name)
    columns = splits.image_column, splits.label_column
    augment = name == "train"
    if cached:
        return DecodedImages(decode_split(split, *columns, preprocessing, name, num_proc), preprocessing, augment, seed)
    train_transform, eval_transform = preprocessing.pil_transforms()
    if augment:
        return ImageClassificationDataset(split, *columns, train_transform, name, seed=seed)
    return ImageClassificationDataset(split, *columns, eval_transform, name)


class DecodedImages(torch.utils.data.Dataset):
    """Rows of a decoded split as `{"pixel_values", "labels"}`, normalised exactly as timm's transforms do.

    With `augment`, row i in epoch e is cropped and flipped with its own generator seeded by (seed, e, i), as the
    PIL pipeline does: the same pixels whatever the data order, the workers, or a resume mid-epoch.
    """

    def __init__(self, decoded: datasets.Dataset, preprocessing: Preprocessing, augment: bool = False, seed: int = 0):
        self.pixels = decoded.data.column("pixels")
        self.labels = decoded.data.column("labels").to_numpy()
        self.preprocessing, self.seed, self.epoch = preprocessing, seed, 0
        self.recipe = preprocessing.recipe if augment else None
        self.interpolation = InterpolationMode(preprocessing.interpolation)
        self.mean = torch.tensor(preprocessing.mean).view(-1, 1, 1)
        self.std = torch.tensor(preprocessing.std).view(-1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def uint8(self, index: int) -> torch.Tensor:
        """Row `index` as stored (no augmentation): the pixels the evaluation transform sees."""
        size = self.preprocessing.size
        # Copied out of the Arrow buffer: it may be read-only (memory-mapped), which torch.frombuffer cannot take
        # on some torch/pyarrow versions ("could not retrieve buffer from object", seen in DataLoader workers).
        row = np.frombuffer(self.pixels[index].as_buffer(), dtype=np.uint8).reshape(3, size, size)
        return torch.from_numpy(row.copy())

    def __getitem__(self, index: int) -> dict[str, Any]:
        pixels = self.uint8(index)
        if self.recipe is not None:
            pixels = self._augment(pixels, np.random.default_rng([self.seed, self.epoch, index]))
        # as timm's ToTensor + Normalize: x / 255, then (x - mean) / std, so the values match bit for bit
        return {"pixel_values": pixels.float().div(255).sub(self.mean).div(self.std), "labels": int(self.labels[index])}

    def _augment(self, pixels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """The recipe's random resized crop (back to full size) and horizontal flip, on the uint8 tensor."""
        size = self.preprocessing.size
        top, left, height, width = random_resized_crop_box(rng, size, size, self.recipe["scale"], self.recipe["ratio"])
        pixels = tvf.resized_crop(
            pixels, top, left, height, width, [size, size], interpolation=self.interpolation, antialias=True
        )
        return pixels.flip(-1) if rng.random() < self.recipe["hflip"] else pixels


def random_resized_crop_box(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop covering a `scale` share of the area with an aspect ratio in `ratio`
    (log-uniform), as in Szegedy et al. 2015: ten tries, else the whole image.

    Drawn from `rng` rather than torch's global generator: seeding that per row costs twice the crop itself.
    """
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_width, crop_height = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return top, left, crop_height, crop_width
    return 0, 0, height, width


# ---- the head alone on stored features ----------------------------------------------------------------------
def feature_epochs(strategy: Strategy, model: torch.nn.Module) -> int:
    """How many epochs, from the first, train the new head alone (every epoch for `lp`, the LP phase of `lpft`,
    gradual unfreezing's first stage): those can train on stored features. `model` as the strategy prepared it,
    so anything it adds (adapters) counts as trained."""
    backbone = {name for name, _ in model.named_parameters()} - set(strategy.layout.new)
    return next(
        (epoch for epoch in range(strategy.num_epochs) if not backbone <= strategy.frozen_tensors(epoch)),
        strategy.num_epochs,
    )


def check_feature_cache(strategy: Strategy, model: torch.nn.Module, augmentation: str, args: TrainingArguments) -> int:
    """The number of epochs that train on stored features, after checking that they stand in for the backbone
    exactly: it does not train in those epochs, and nothing in the model is random while training (dropout,
    stochastic depth), so each image's features are the same at every step."""
    epochs = feature_epochs(strategy, model)
    if epochs == 0:
        layout, frozen = strategy.layout, strategy.frozen_tensors(0)
        trained_head = [name for name in layout.head if name not in layout.new and name not in frozen]
        if trained_head and set(layout.backbone) <= frozen:
            raise MedftError(
                f"--cache_features: this model's head has pretrained layers before its classifier ({trained_head[0]}"
                f", ...), and --strategy {strategy.name} trains them with it, so what they hand the classifier "
                "changes at every step. Drop --cache_features."
            )
        raise MedftError(
            f"--cache_features: --strategy {strategy.name} trains more than the new head from its first epoch, so "
            "the backbone must run on every step. Use it with a strategy that starts with the head alone (lp, lpft, "
            "gu_lf, gu_fl), or drop --cache_features."
        )
    if epochs == strategy.num_epochs:
        if augmentation != "none":
            raise MedftError(
                f"--cache_features stores one feature per image, so it cannot augment (--augmentation "
                f"{augmentation}). Pass --augmentation none, or drop --cache_features."
            )
        if args.activation_checkpointing:
            raise MedftError(
                "--cache_features: the backbone never runs while the head trains on stored features, so there is "
                "nothing for --activation_checkpointing (--gradient_checkpointing) to save. Drop that flag."
            )
    else:
        if args.dataloader_persistent_workers:
            raise MedftError(
                f"--dataloader_persistent_workers: a persistent worker keeps its copy of the training set as it was "
                f"at epoch 0, so it would go on serving stored features after epoch {epochs}, when --strategy "
                f"{strategy.name} starts training the backbone on images. Drop the flag (workers restart each epoch)."
            )
        if args.max_steps > 0:
            raise MedftError(
                f"--max_steps {args.max_steps} with --cache_features: --strategy {strategy.name} switches from "
                "stored features to images at an epoch counted from --num_train_epochs, which --max_steps would "
                "change under it. Give the length as --num_train_epochs."
            )
    random_layers = _random_while_training(model.timm_model)
    if random_layers:
        raise MedftError(
            f"--cache_features stores one feature per image, but this model is random while training ({random_layers}"
            "), so its features change from step to step. Save the model with those rates at 0 (timm's drop_rate, "
            "drop_path_rate), or drop --cache_features."
        )
    return epochs


def _random_while_training(timm_model: torch.nn.Module) -> str:
    """The rates that make the model's training forward random, e.g. "drop_rate=0.2, blocks.1.0.drop_path
    drop_prob=0.1": dropout modules, and the rate attributes timm keeps where it calls dropout or stochastic depth
    functionally (a model's head, DenseNet's layers). Empty if nothing is random."""
    found = []
    for name, module in timm_model.named_modules():
        rates = {attribute: getattr(module, attribute, 0) for attribute in ("drop_rate", "drop_path_rate", "drop_prob")}
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            rates["p"] = module.p
        found += [f"{name} {key}={rate}".strip() for key, rate in rates.items() if isinstance(rate, float) and rate > 0]
    return ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")


class StoredFeatures(torch.utils.data.Dataset):
    """What the classifier receives (timm's pre-logits: pooled, one vector per image) as the `pixel_values` of a
    model inside `head_only`. 4 bytes per feature whatever the image size: 5 KiB an image for EfficientNet's 1280
    features, where the unpooled feature map of a 224 px image would take 49 times that."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    @classmethod
    @torch.inference_mode()
    def compute(cls, model: torch.nn.Module, rows: torch.utils.data.Dataset, batch_size: int) -> StoredFeatures:
        """timm's pre-logits of every row, in eval mode (BatchNorm on its running statistics): what a frozen
        backbone and pooling hand the classifier, computed once instead of once per epoch.

        The images go in channels-last: 0.57-0.75x the time of contiguous input on 2 CPU threads (EfficientNet-Lite0
        and DenseNet-121 at 64 px, medians per batch size), 0.76-0.90x on an H100 at 224 px, the same there at 64 px
        (docs/performance.md). The features are pooled vectors, so nothing downstream sees the layout.
        """
        timm_model = model.timm_model
        was_training = timm_model.training
        timm_model.eval()
        device = next(model.parameters()).device
        features, labels = [], []
        try:
            for batch in torch.utils.data.DataLoader(rows, batch_size=batch_size):
                pixels = batch["pixel_values"].to(device, memory_format=torch.channels_last)
                feature_map = timm_model.forward_features(pixels)
                features.append(timm_model.forward_head(feature_map, pre_logits=True).cpu())
                labels.append(batch["labels"])
        finally:
            timm_model.train(was_training)
        return cls(torch.cat(features), torch.cat(labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"pixel_values": self.features[index], "labels": self.labels[index]}


class FeaturesThenImages(torch.utils.data.Dataset):
    """A strategy that trains the head alone for its first `feature_epochs` epochs, then more (LP-FT, gradual
    unfreezing): stored features until then, the image rows after. Training rows learn the epoch from the Trainer
    (`set_epoch`, as augmentation does); validation rows follow them (`follows`), since Accelerate sets every
    evaluation loader's rows back to epoch 0."""

    def __init__(
        self,
        features: StoredFeatures,
        images: torch.utils.data.Dataset,
        feature_epochs: int,
        follows: FeaturesThenImages | None = None,
    ):
        self.features, self.images, self.feature_epochs = features, images, feature_epochs
        self.follows, self.epoch = follows, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.images, "set_epoch"):
            self.images.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch = (self.follows or self).epoch
        return (self.features if epoch < self.feature_epochs else self.images)[index]


def on_stored_features(
    model: torch.nn.Module,
    unaugmented_train: torch.utils.data.Dataset,
    images: tuple[torch.utils.data.Dataset, torch.utils.data.Dataset],
    feature_epochs: int,
    num_epochs: int,
    batch_size: int,
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset, AbstractContextManager]:
    """The training and validation rows of a run whose first `feature_epochs` epochs (`check_feature_cache`) train
    the head alone, and the context to train in: `head_only` when that is the whole run, else
    `takes_stored_features`, with the (training, validation) `images` after the switch. The backbone runs once over
    `unaugmented_train` (the training split as evaluation sees it) and the validation images, on the device `model`
    sits on."""
    train_images, validation_images = images
    train_features = StoredFeatures.compute(model, unaugmented_train, batch_size)
    validation_features = StoredFeatures.compute(model, validation_images, batch_size)
    if feature_epochs == num_epochs:
        return train_features, validation_features, head_only(model)
    train_rows = FeaturesThenImages(train_features, train_images, feature_epochs)
    validation_rows = FeaturesThenImages(validation_features, validation_images, feature_epochs, follows=train_rows)
    return train_rows, validation_rows, takes_stored_features(model)


@contextmanager
def takes_stored_features(model: torch.nn.Module) -> Iterator[None]:
    """Within: the model takes a batch of `StoredFeatures` rows (2-D pre-logits) as well as images (4-D), and runs
    only the classifier on the former (pooling ran once per image, in `StoredFeatures.compute`)."""
    timm_model = model.timm_model
    classifier = timm_model.get_classifier()
    forward_features, forward_head = timm_model.forward_features, timm_model.forward_head

    # Keyword arguments pass through: timm's ViTs call `forward_features(x, attn_mask=...)`.
    def features(inputs: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return inputs if inputs.ndim == 2 else forward_features(inputs, *args, **kwargs)

    def head(inputs: torch.Tensor, pre_logits: bool = False, **kwargs) -> torch.Tensor:
        if inputs.ndim == 2:
            return inputs if pre_logits else classifier(inputs)
        return forward_head(inputs, pre_logits=pre_logits, **kwargs)

    # Instance attributes shadow the methods until deleted.
    timm_model.forward_features, timm_model.forward_head = features, head
    try:
        yield
    finally:
        del timm_model.forward_features, timm_model.forward_head


@contextmanager
def head_only(model: torch.nn.Module) -> Iterator[None]:
    """`takes_stored_features` for a run that trains the head alone in every epoch (`lp`), with the timm model's
    other children (the frozen backbone) out of the module tree.

    The Trainer walks every module and parameter on each step (`model.train()`, gradient clipping, `zero_grad`),
    which costs more than a step that trains a few thousand weights, and a checkpoint saved inside holds the head
    alone, since the backbone is the base model's, unchanged (a resume rebuilds it from `--model`, which the resume
    identity pins). Leaving restores the whole model, its backbone frozen (`requires_grad` off, as the strategy
    would have set it had it seen it); no weight is touched.
    """
    timm_model = model.timm_model
    head = {id(parameter) for parameter in timm_model.get_classifier().parameters()}
    children = dict(timm_model._modules)
    kept = {
        name: child
        for name, child in children.items()
        if child is not None and any(id(parameter) in head for parameter in child.parameters())
    }
    for name, child in children.items():
        if name not in kept and child is not None:
            child.requires_grad_(False)
    timm_model._modules.clear()
    timm_model._modules.update(kept)
    try:
        with takes_stored_features(model):
            yield
    finally:
        timm_model._modules.clear()
        timm_model._modules.update(children)
