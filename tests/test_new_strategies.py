"""The strategies that came after the paper (llrd, head_lr, bitfit, lora, surgical): exactly these tensors move, the
rates are these, and LoRA's export is the merged model, loadable everywhere a plain run is."""

from __future__ import annotations

import itertools

import datasets
import numpy as np
import pytest
import timm
import torch
from conftest import make_trainer
from test_strategies import changed, norm_buffers
from test_train import train
from transformers import AutoModelForImageClassification, pipeline

from medft_hf.data import bundled_dataset_path
from medft_hf.errors import MedftError
from medft_hf.strategies import STRATEGIES, build_strategy


def test_llrd_rates_fall_by_layer_decay_from_the_head_down_under_the_scheduler(tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer(
        "llrd", tiny_model, tiny_dataset, tmp_path, epochs=1, layer_decay=0.5, learning_rate=0.01,
        lr_scheduler_type="linear", warmup_steps=1,
    )  # fmt: skip
    trainer.create_optimizer_and_scheduler(num_training_steps=3)
    named = {id(p): n for n, p in trainer.model.named_parameters()}
    scale_of = {named[id(p)]: g["lr_scale"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert scale_of["timm_model.classifier.weight"] == 1.0
    assert scale_of["timm_model.conv_stem.weight"] == min(scale_of.values())
    distinct = sorted(set(scale_of.values()))
    assert all(np.isclose(low / high, 0.5) for low, high in itertools.pairwise(distinct))
    assert len(scale_of) == len(named), "every tensor is in exactly one group"
    for step in range(3):
        schedule = 0.01 * (step / 1 if step < 1 else (3 - step) / 2)
        for group in trainer.optimizer.param_groups:
            assert group["lr"] == pytest.approx(schedule * group["lr_scale"], abs=1e-12)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    trainer.optimizer, trainer.lr_scheduler = None, None
    trainer.train()
    assert all(changed(snaps.states[0], snaps.states[-1], named.values()).values())


def test_head_lr_scales_only_the_new_classifier(tiny_model, tiny_dataset, tmp_path):
    trainer, _ = make_trainer("head_lr", tiny_model, tiny_dataset, tmp_path, head_lr_scale=5.0, learning_rate=0.02)
    optimizer = trainer.create_optimizer()
    named = {id(p): n for n, p in trainer.model.named_parameters()}
    rates = {named[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    classifier = {"timm_model.classifier.weight", "timm_model.classifier.bias"}
    assert {n for n, lr in rates.items() if lr == pytest.approx(0.1)} == classifier
    assert all(lr == pytest.approx(0.02) for n, lr in rates.items() if n not in classifier)
    assert len(rates) == len(named)


def test_bitfit_trains_exactly_the_biases_and_the_classifier(tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer("bitfit", tiny_model, tiny_dataset, tmp_path, epochs=1)
    trainer.train()
    names = [n for n, _ in trainer.model.named_parameters()]
    trains = [n for n in names if n.endswith(".bias") or n.startswith("timm_model.classifier.")]
    moved = changed(snaps.states[0], snaps.states[-1], names)
    assert all(moved[n] for n in trains)
    assert not any(moved[n] for n in names if n not in trains), "every weight is bit-identical"
    assert trainer.trainable_per_epoch[0] == sum(dict(trainer.model.named_parameters())[n].numel() for n in trains)


@pytest.mark.parametrize("choice", ["first", "last", "2"])
def test_surgical_trains_only_the_chosen_block_and_the_head(choice, tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer("surgical", tiny_model, tiny_dataset, tmp_path, epochs=1, surgical_block=choice)
    trainer.train()
    layout = trainer.strategy.layout
    chosen = {"first": 0, "last": len(layout.blocks) - 1, "2": 2}[choice]
    for index, block in enumerate(layout.blocks):
        moved = changed(snaps.states[0], snaps.states[-1], list(block) + norm_buffers(trainer.model, block))
        assert all(moved.values()) if index == chosen else not any(moved.values()), f"block {index}"
    assert all(changed(snaps.states[0], snaps.states[-1], layout.head).values())


def test_surgical_refuses_a_block_the_backbone_does_not_have(tiny_model):
    from test_strategies import _layout

    layout = _layout(tiny_model)
    config = STRATEGIES["surgical"].config_class(surgical_block=str(len(layout.blocks)))
    with pytest.raises(MedftError, match=f"from 0 to {len(layout.blocks) - 1}"):
        build_strategy("surgical", config, layout, 4)


def test_lora_trains_adapters_and_head_only_and_exports_the_merged_model(tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer("lora", tiny_model, tiny_dataset, tmp_path, epochs=1, lora_r=4)
    trainer.train()
    names = [n for n, _ in trainer.model.named_parameters()]
    adapters = [n for n in names if "lora_" in n]
    assert adapters, "peft wrapped the backbone's layers"
    moved = changed(snaps.states[0], snaps.states[-1], names)
    assert any(moved[n] for n in adapters) and all(moved[n] for n in trainer.strategy.layout.new)
    frozen = [n for n in names if n not in adapters and n not in trainer.strategy.layout.new]
    assert not any(moved[n] for n in frozen), "pretrained weights (and BatchNorm) are bit-identical"
    stats = [n for n in snaps.states[0] if n.endswith(("running_mean", "running_var"))]
    assert not any(changed(snaps.states[0], snaps.states[-1], stats).values())

    images = torch.randn(4, 3, 32, 32)
    model = trainer.model.eval()
    with torch.no_grad():
        adapted = model(pixel_values=images).logits
        exported = trainer.strategy.export_model(model)
        merged = exported(pixel_values=images).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
    plain = timm.create_model("test_efficientnet", num_classes=3).state_dict()
    assert {k.removeprefix("timm_model.") for k in exported.state_dict()} == set(plain), "a plain timm model again"


def test_a_lora_run_loads_three_ways_and_predicts_what_training_predicted(tiny_model, tmp_path):
    results = train(tiny_model, None, tmp_path, "--strategy", "lora", "--num_train_epochs", "1")  # BreastMNIST
    test = datasets.load_dataset(bundled_dataset_path(), split="test")
    images = [image.convert("RGB") for image in test["image"]]
    classifier = pipeline("image-classification", model=str(tmp_path), device="cpu")
    names = AutoModelForImageClassification.from_pretrained(tmp_path).config.id2label
    predicted = [max(classifier(image, top_k=None), key=lambda p: p["score"])["label"] for image in images]
    truth = [names[label] for label in test["label"]]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    assert accuracy == pytest.approx(results.test["accuracy"], abs=1 / len(images) + 1e-9)
    matrix = np.asarray(results.test["confusion_matrix"])
    assert [predicted.count(names[i]) for i in range(len(names))] == matrix.sum(axis=0).tolist()
    from_timm = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    pixels = classifier.image_processor(images[0], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(
            from_timm(pixels), AutoModelForImageClassification.from_pretrained(tmp_path)(pixel_values=pixels).logits
        )
