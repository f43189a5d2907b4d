"""The fast paths change nothing but speed: the decoded-image cache gives the evaluation transform's pixels, its
augmentation is seeded per row, and the head trained on stored features (a linear probe, the head-only epochs of
LP-FT and gradual unfreezing) trains exactly what it does on images."""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import torch
import transformers
from conftest import CLASS_NAMES, make_images, make_trainer
from PIL import Image
from safetensors.torch import load_file
from test_train import train
from timm.models import save_for_hf

from medft_hf.cache import (
    DecodedImages,
    FeaturesThenImages,
    StoredFeatures,
    decode_split,
    head_only,
    image_datasets,
    random_resized_crop_box,
    takes_stored_features,
)
from medft_hf.data import ImageClassificationDataset, Preprocessing, load_splits
from medft_hf.errors import MedftError
from medft_hf.modeling import load_model
from medft_hf.results import RunResult


def _split(images) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    return datasets.Dataset.from_dict({"image": images, "label": [0] * len(images)}, features=features)


@pytest.mark.parametrize("size", [32, 45])
def test_the_cache_returns_the_pixels_of_decoding_directly(size):
    images, _ = make_images(4, seed=3, size=60)
    ramp = np.linspace(0, 4095, 60 * 40, dtype=np.uint16).reshape(40, 60)  # 12-bit, not square
    gray = np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8)
    images += [Image.fromarray(ramp), Image.fromarray(gray, mode="L")]
    split = _split(images)
    preprocessing = Preprocessing(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", "none")
    cached = DecodedImages(decode_split(split, "image", "label", preprocessing, "test"), preprocessing)
    _, evaluation = preprocessing.pil_transforms()
    direct = ImageClassificationDataset(split, "image", "label", evaluation, "test")
    for index in range(len(split)):
        assert torch.equal(cached[index]["pixel_values"], direct[index]["pixel_values"]), index


def test_augmentation_is_seeded_per_row_whatever_the_order():
    images, _ = make_images(6, seed=1, size=40)
    preprocessing = Preprocessing(32, (0.5,) * 3, (0.25,) * 3, "bilinear", "rrc")
    decoded = decode_split(_split(images), "image", "label", preprocessing, "train")
    rows = DecodedImages(decoded, preprocessing, augment=True, seed=7)
    forward = [rows[i]["pixel_values"] for i in range(6)]
    backward = [rows[i]["pixel_values"] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward, strict=True))
    rows.set_epoch(1)
    assert not torch.equal(rows[0]["pixel_values"], forward[0])  # a new epoch draws new crops
    unaugmented = DecodedImages(decoded, preprocessing)
    assert not torch.equal(unaugmented[0]["pixel_values"], forward[0])


def test_crop_boxes_stay_inside_the_image_and_cover_the_requested_area():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, height, width = random_resized_crop_box(rng, 64, 64, (0.5, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top <= 64 - height and 0 <= left <= 64 - width
        assert 0.5 * 64 * 64 * 0.9 <= height * width <= 64 * 64  # rounding aside
        assert 3 / 4 - 0.05 <= width / height <= 4 / 3 + 0.05


def test_a_corrupt_image_in_the_cache_names_its_row():
    images, _ = make_images(3, seed=0)
    split = _split(images).cast_column("image", datasets.Image(decode=False))
    rows = split.to_dict()
    rows["image"][2] = {"bytes": b"not an image", "path": None}
    broken = datasets.Dataset.from_dict(rows, features=split.features).cast_column("image", datasets.Image())
    preprocessing = Preprocessing(32, (0.5,) * 3, (0.25,) * 3, "bilinear", "none")
    with pytest.raises(MedftError, match="train row 2: the image cannot be decoded"):
        decode_split(broken, "image", "label", preprocessing, "train")


def test_cached_feature_lp_trains_exactly_what_an_uncached_lp_trains(tiny_model, tiny_dataset, tmp_path):
    common = ["--strategy", "lp", "--augmentation", "none", "--num_train_epochs", "2", "--bootstrap_resamples", "0"]
    uncached = train(tiny_model, tiny_dataset, tmp_path / "images", *common)
    features = train(tiny_model, tiny_dataset, tmp_path / "features", *common, "--cache_features")
    assert (uncached.data_pipeline, features.data_pipeline) == ("decoded", "features")
    for mine, theirs in zip(features.history, uncached.history, strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        assert mine["validation"]["loss"] == pytest.approx(theirs["validation"]["loss"], rel=1e-5)
    before = load_file(tiny_model / "model.safetensors")
    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("features", "images")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], rtol=1e-5, atol=1e-6)
        if not name.startswith("classifier."):  # only the head trains (the run saves timm's names)
            assert torch.equal(tensor, before[name]), name
    assert RunResult.load(tmp_path / "features").test["balanced_accuracy"] == pytest.approx(
        uncached.test["balanced_accuracy"]
    )


@pytest.mark.parametrize(("strategy", "flags"), [("lpft", ["--lp_epochs", "2"]), ("gu_lf", ["--unfreeze_every", "1"])])
def test_head_only_epochs_on_stored_features_train_what_images_train(
    strategy, flags, tiny_model, tiny_dataset, tmp_path
):
    """LP-FT's LP phase (2 epochs) and gradual unfreezing's first stage (1 epoch) on stored features, the rest on
    images: without augmentation, the same run as on images throughout, to floating-point tolerance.

    Compared by the losses of every epoch: the weights themselves differ by up to ~1e-4 after the fine-tuning
    steps, where Adam turns rounding noise in near-zero gradients into steps of the learning rate's size."""
    common = ["--strategy", strategy, *flags, "--augmentation", "none", "--num_train_epochs", "3"]
    common += ["--bootstrap_resamples", "0", "--load_best_model_at_end", "false"]  # the last epoch's weights
    uncached = train(tiny_model, tiny_dataset, tmp_path / "images", *common)
    features = train(tiny_model, tiny_dataset, tmp_path / "features", *common, "--cache_features")
    assert features.data_pipeline == "features, then decoded"
    for mine, theirs in zip(features.history, uncached.history, strict=True):
        assert mine["trainable_parameters"] == theirs["trainable_parameters"]
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        assert mine["validation"]["loss"] == pytest.approx(theirs["validation"]["loss"], rel=1e-5)
    assert features.test["balanced_accuracy"] == pytest.approx(uncached.test["balanced_accuracy"])
    before = load_file(tiny_model / "model.safetensors")  # timm's names, as the run saves them
    after = load_file(tmp_path / "features" / "model.safetensors")
    moved = [name for name in after if name.startswith("blocks.") and not after[name].equal(before[name])]
    assert moved, "the backbone trained after the head-only epochs"


def test_head_only_epochs_on_stored_features_see_unaugmented_images(tiny_model, tiny_dataset, tmp_path):
    """With --augmentation light, LP-FT's LP phase trains exactly as with none (the features of the images as
    evaluation sees them; through images, or through features of augmented images, it would differ), and the
    fine-tuning epochs are augmented."""
    common = ["--strategy", "lpft", "--lp_epochs", "2", "--cache_features", "--num_train_epochs", "3"]
    common += ["--bootstrap_resamples", "0", "--skip_test"]
    light = train(tiny_model, tiny_dataset, tmp_path / "light", *common, "--augmentation", "light")
    plain = train(tiny_model, tiny_dataset, tmp_path / "none", *common, "--augmentation", "none")
    assert [epoch["train_loss"] for epoch in light.history[:2]] == [epoch["train_loss"] for epoch in plain.history[:2]]
    assert light.history[2]["train_loss"] != plain.history[2]["train_loss"]


def test_stored_features_feed_only_the_head_only_epochs(tiny_model, tiny_dataset, tmp_path):
    """The backbone never runs in LP-FT's LP phase (epoch 0 here), and runs on images once fine-tuning starts."""
    trainer, _ = make_trainer("lpft", tiny_model, tiny_dataset, tmp_path, epochs=2, cached=True, lp_epochs=1)
    model = trainer.model
    stored = StoredFeatures.compute(model, trainer.train_dataset, batch_size=16)
    trainer.train_dataset = FeaturesThenImages(stored, trainer.train_dataset, feature_epochs=1)
    stem_calls = collections.Counter()
    model.timm_model.conv_stem.register_forward_hook(lambda *_: stem_calls.update([trainer.state.epoch // 1]))
    with takes_stored_features(model):
        trainer.train()
    assert stem_calls == {1.0: 3}, "no backbone forward in epoch 0; one per step (48 images, batches of 16) in epoch 1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "ft", "--augmentation", "none"], "--strategy ft trains more than the new head from its first"),
        (
            [
                "--strategy",
                "lpft",
                "--num_train_epochs",
                "3",
                "--augmentation",
                "none",
                "--dataloader_persistent_workers",
                "1",
            ],
            "go on serving stored features after epoch 1, when --strategy lpft starts training the backbone",
        ),
        (["--strategy", "lora", "--augmentation", "none"], "--strategy lora trains more than the new head from its"),
        (
            ["--strategy", "auto_rgn", "--augmentation", "none"],
            "--strategy auto_rgn trains more than the new head from its",
        ),
        (["--strategy", "gu_lf", "--max_steps", "4"], "--max_steps 4 with --cache_features: --strategy gu_lf switches"),
        (["--strategy", "lp"], "cannot augment \\(--augmentation light\\)"),
        (
            ["--strategy", "lp", "--augmentation", "none", "--gradient_checkpointing"],
            "nothing for --activation_checkpointing",
        ),
    ],
)
def test_cached_features_are_refused_where_they_would_change_training(
    args, message, tiny_model, tiny_dataset, tmp_path
):
    with pytest.raises(MedftError, match=message):
        train(tiny_model, tiny_dataset, tmp_path / "run", *args, "--cache_features")
    assert not (tmp_path / "run").exists()


def test_cached_features_are_refused_for_a_model_that_is_random_while_training(tiny_model, tiny_dataset, tmp_path):
    """Head dropout (functional in timm's EfficientNet: only `drop_rate` shows it) would differ at every step."""
    with_dropout = tmp_path / "with_dropout"
    shutil.copytree(tiny_model, with_dropout)
    config = json.loads((with_dropout / "config.json").read_text())
    (with_dropout / "config.json").write_text(json.dumps({**config, "model_args": {"drop_rate": 0.2}}))
    args = ["--strategy", "lp", "--augmentation", "none", "--cache_features"]
    with pytest.raises(MedftError, match=re.escape("random while training (drop_rate=0.2)")):
        train(with_dropout, tiny_dataset, tmp_path / "run", *args)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def timm_repos(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Randomly initialised timm test models in Hub layout: the EfficientNet of the other tests, a ViT (its forward
    passes keyword arguments to `forward_features`) and a ConvNeXt (a pretrained norm in its head)."""
    repos = {"test_efficientnet": tiny_model}
    for name in ("test_vit", "test_convnext"):
        torch.manual_seed(0)
        repos[name] = tmp_path_factory.mktemp(name)
        save_for_hf(timm.create_model(name, pretrained=False, num_classes=1000), repos[name], safe_serialization=True)
    return repos


@pytest.mark.parametrize("architecture", ["test_efficientnet", "test_vit"])
def test_stored_features_are_what_the_classifier_receives(architecture, timm_repos, tiny_dataset):
    splits = load_splits(str(tiny_dataset))
    model = load_model(str(timm_repos[architecture]), splits.class_names)
    preprocessing = Preprocessing.for_model(model.timm_model, 32, "none")
    train_rows, _, _ = image_datasets(splits, preprocessing, seed=0)
    stored = StoredFeatures.compute(model, train_rows, batch_size=3)
    model.eval()
    batch = torch.utils.data.default_collate([train_rows[i] for i in range(len(train_rows))])
    with torch.no_grad():
        logits = model(batch["pixel_values"]).logits
        with head_only(model):
            assert stored.features.shape == (len(train_rows), model.timm_model.num_features)
            torch.testing.assert_close(model(stored.features).logits, logits)
        with takes_stored_features(model):
            torch.testing.assert_close(model(stored.features).logits, logits)
            torch.testing.assert_close(model(batch["pixel_values"]).logits, logits)  # images still go through
        torch.testing.assert_close(model(batch["pixel_values"]).logits, logits)  # leaving restores the full model
    assert torch.equal(stored.labels, batch["labels"])


def test_cached_features_are_refused_for_a_head_with_pretrained_layers(timm_repos, tiny_dataset, tmp_path):
    """ConvNeXt's head norm (like VGG's fc6/fc7) is pretrained and trains with the classifier in LP."""
    args = ["--strategy", "lp", "--augmentation", "none", "--cache_features"]
    message = "head has pretrained layers before its classifier (timm_model.head"
    with pytest.raises(MedftError, match=re.escape(message)):
        train(timm_repos["test_convnext"], tiny_dataset, tmp_path / "run", *args)
    assert not (tmp_path / "run").exists()


def test_the_trainers_flops_estimate_is_transformers_own(tiny_model, tiny_dataset, tmp_path):
    """The parameter count is cached (the Trainer walks every module for it on every step); the figure is not."""
    trainer, _ = make_trainer("lp", tiny_model, tiny_dataset, tmp_path)
    inputs = {"pixel_values": torch.zeros(4, 3, 32, 32), "labels": torch.zeros(4, dtype=torch.long)}
    expected = transformers.Trainer.floating_point_ops(trainer, inputs)
    assert expected > 0
    assert trainer.floating_point_ops(inputs) == trainer.floating_point_ops(inputs) == expected


def test_cached_feature_lp_checkpoints_hold_the_head_and_resume_bit_identically(
    device, tiny_model, tiny_dataset, tmp_path
):
    """Inside `head_only` the backbone is out of the module tree, so checkpoints hold the head alone; a resume
    rebuilds the backbone from --model and ends exactly where the uninterrupted run did."""
    common = ["--strategy", "lp", "--augmentation", "none", "--cache_features", "--num_train_epochs", "3"]
    common += ["--bootstrap_resamples", "0", "--save_total_limit", "3", "--load_best_model_at_end", "false"]
    full = train(tiny_model, tiny_dataset, tmp_path / "full", *common, device=device)
    checkpoint = tmp_path / "full" / "checkpoint-3"  # the end of epoch 1: 48 images in batches of 16
    assert set(load_file(checkpoint / "model.safetensors")) == {"classifier.weight", "classifier.bias"}
    shutil.copytree(checkpoint, tmp_path / "resumed" / checkpoint.name)
    resumed = train(
        tiny_model, tiny_dataset, tmp_path / "resumed", *common, "--resume_from_checkpoint", "true", device=device
    )
    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("full", "resumed")]
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 2, "the saved model is the whole model"
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    assert resumed.history == full.history
    assert resumed.test == full.test


@pytest.mark.parametrize(("lp_epochs", "step"), [("2", 4), ("1", 3), ("1", 4)])
def test_lpft_on_stored_features_resumes_bit_identically(lp_epochs, step, device, tiny_model, tiny_dataset, tmp_path):
    """Three steps an epoch: from step 4, inside the LP phase on stored features (lp_epochs 2) or inside the first
    fine-tuning epoch (lp_epochs 1); from step 3, at the switch to images."""
    common = ["--strategy", "lpft", "--lp_epochs", lp_epochs, "--cache_features", "--num_train_epochs", "3"]
    common += ["--bootstrap_resamples", "0", "--load_best_model_at_end", "false", "--save_strategy", "steps"]
    common += ["--save_steps", "1", "--save_total_limit", "9", "--eval_strategy", "epoch"]
    full = train(tiny_model, tiny_dataset, tmp_path / "full", *common, device=device)
    checkpoint = tmp_path / "full" / f"checkpoint-{step}"
    shutil.copytree(checkpoint, tmp_path / "resumed" / checkpoint.name)
    resumed = train(
        tiny_model, tiny_dataset, tmp_path / "resumed", *common, "--resume_from_checkpoint", "true", device=device
    )
    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("full", "resumed")]
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    # Every validation after the checkpoint is the same; the last epoch is replayed whole (a resumed epoch's
    # train_loss averages only the steps after the resume, as the Trainer logs it).
    for theirs, mine in zip(full.history, resumed.history, strict=True):
        if theirs["epoch"] * 3 > step:
            assert mine["validation"] == theirs["validation"]
    assert resumed.history[-1] == full.history[-1]
    assert resumed.test == full.test


def test_head_only_shows_the_trainer_the_head_and_leaves_the_backbone_frozen(tiny_model):
    """The strategy freezes what it sees at each epoch; inside `head_only` it sees the head alone, so the context
    itself must leave the backbone frozen, as an uncached LP ends."""
    model = load_model(str(tiny_model), CLASS_NAMES)
    whole = [name for name, _ in model.named_parameters()]
    with head_only(model):
        assert [name for name, _ in model.named_parameters()] == [
            "timm_model.classifier.weight",
            "timm_model.classifier.bias",
        ]
    assert [name for name, _ in model.named_parameters()] == whole, "the whole model is back, in its order"
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {"timm_model.classifier.weight", "timm_model.classifier.bias"}
