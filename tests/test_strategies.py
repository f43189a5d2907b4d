"""Each strategy's mechanics, proven on real (tiny) training runs: what trains, what stays bit-identical."""

from __future__ import annotations

import pytest
import torch
from conftest import make_trainer

from medft_hf.rng import derived_seed, isolated_rng
from medft_hf.strategies import STRATEGIES


def changed(before: dict, after: dict, names) -> dict[str, bool]:
    return {name: not torch.equal(before[name], after[name]) for name in names}


def norm_buffers(model, parameter_names) -> list[str]:
    """Running statistics of the BatchNorm layers that own any of `parameter_names`."""
    modules = {name.rsplit(".", 1)[0] for name in parameter_names}
    return [
        f"{module}.{buffer}"
        for module in modules
        for buffer in ("running_mean", "running_var")
        if f"{module}.{buffer}" in model.state_dict()
    ]


def test_registry_has_the_papers_eight_strategies_in_order():
    assert list(STRATEGIES) == ["ft", "lp", "lpft", "gu_lf", "gu_fl", "l1sp", "l2sp", "auto_rgn"]


def test_ft_changes_every_tensor(tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer("ft", tiny_model, tiny_dataset, tmp_path, epochs=1)
    trainer.train()
    names = [n for n, _ in trainer.model.named_parameters()]
    assert all(changed(snaps.states[0], snaps.states[-1], names).values())
    assert trainer.trainable_per_epoch == {0: sum(p.numel() for p in trainer.model.parameters())}


def test_lp_leaves_backbone_and_batchnorm_statistics_bit_identical(tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer("lp", tiny_model, tiny_dataset, tmp_path, epochs=2)
    trainer.train()
    layout = trainer.strategy.layout
    backbone = list(layout.backbone)
    stats = norm_buffers(trainer.model, backbone)
    assert stats, "the tiny model has BatchNorm layers"
    assert not any(changed(snaps.states[0], snaps.states[-1], backbone + stats).values())
    assert all(changed(snaps.states[0], snaps.states[-1], layout.head).values())
    head_size = sum(dict(trainer.model.named_parameters())[n].numel() for n in layout.head)
    assert trainer.trainable_per_epoch == {0: head_size, 1: head_size}


def test_lpft_freezes_the_backbone_only_during_the_lp_phase(tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer("lpft", tiny_model, tiny_dataset, tmp_path, epochs=3, lp_epochs=1)
    trainer.train()
    backbone = list(trainer.strategy.layout.backbone)
    stats = norm_buffers(trainer.model, backbone)
    lp_phase = changed(snaps.states[0], snaps.states[1], backbone + stats)
    assert not any(lp_phase.values())
    assert all(changed(snaps.states[0], snaps.states[1], trainer.strategy.layout.head).values())
    for epoch in (1, 2):
        assert all(changed(snaps.states[epoch], snaps.states[epoch + 1], backbone).values())


def test_lpft_default_lp_share_is_a_quarter(tiny_model, tiny_dataset, tmp_path):
    trainer, _ = make_trainer("lpft", tiny_model, tiny_dataset, tmp_path)
    for epochs, expected in [(1, 1), (4, 1), (8, 2), (10, 2), (20, 5)]:
        trainer.strategy.num_epochs = epochs
        assert trainer.strategy.lp_epochs() == expected


@pytest.mark.parametrize("strategy", ["gu_lf", "gu_fl"])
def test_gradual_unfreezing_unfreezes_exactly_the_scheduled_blocks(strategy, tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer(strategy, tiny_model, tiny_dataset, tmp_path, epochs=4, unfreeze_every=0.5)
    trainer.train()
    blocks = trainer.strategy.layout.blocks
    order = list(range(len(blocks)))
    if strategy == "gu_lf":
        order.reverse()
    for epoch in range(4):
        training = set(order[: min(len(blocks), 2 * epoch)])  # two more blocks per epoch
        for index, block in enumerate(blocks):
            moved = changed(snaps.states[epoch], snaps.states[epoch + 1], block).values()
            if index in training:
                assert all(moved), f"epoch {epoch}: block {index} should train"
            else:
                assert not any(moved), f"epoch {epoch}: block {index} should be frozen"
        assert all(changed(snaps.states[epoch], snaps.states[epoch + 1], trainer.strategy.layout.head).values())


def test_gradual_unfreezing_default_has_every_block_unfrozen_by_mid_training(tiny_model, tiny_dataset, tmp_path):
    trainer, _ = make_trainer("gu_lf", tiny_model, tiny_dataset, tmp_path)
    strategy, blocks = trainer.strategy, len(trainer.strategy.layout.blocks)
    for epochs in (2, 6, 12, 30):
        strategy.num_epochs = epochs
        counts = [strategy.num_unfrozen(epoch) for epoch in range(epochs)]
        assert counts[0] == 0
        assert counts == sorted(counts)
        assert counts[epochs // 2] == blocks


@pytest.mark.parametrize(("strategy", "p"), [("l2sp", 2), ("l1sp", 1)])
def test_sp_penalty_and_gradient_match_an_independent_computation(strategy, p, tiny_model, tiny_dataset, tmp_path):
    alpha, beta = 0.3, 0.05
    trainer, _ = make_trainer(strategy, tiny_model, tiny_dataset, tmp_path, sp_alpha=alpha, sp_beta=beta)
    model = trainer.model
    pretrained = {name: tensor.detach().clone() for name, tensor in model.named_parameters()}
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))

    # Independently: conv/linear weights of the backbone vs. those of timm's classifier.
    classifier = model.timm_model.get_classifier()
    head = {id(classifier.weight)}
    expected = torch.zeros((), dtype=torch.float64)
    expected_grad = {}
    for module in model.modules():
        if not isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            continue
        name = next(n for n, q in model.named_parameters() if q is module.weight)
        w = module.weight.detach().double()
        if id(module.weight) in head:
            expected += beta / 2 * (w**2).sum()
            expected_grad[name] = beta * w
        else:
            d = w - pretrained[name].double()
            expected += alpha / p * (d.abs() ** p).sum()
            expected_grad[name] = alpha * (d if p == 2 else torch.sign(d))

    trainer.strategy.anchor = [pretrained[name] for name in trainer.strategy.backbone_names]
    penalty = trainer.strategy.penalty(model)
    torch.testing.assert_close(penalty.double(), expected, rtol=1e-5, atol=0)
    penalty.backward()
    for name, parameter in model.named_parameters():
        want = expected_grad.get(name)
        if want is None:
            assert parameter.grad is None or not parameter.grad.any(), f"{name} is not penalised"
        else:
            torch.testing.assert_close(parameter.grad.double(), want, rtol=1e-5, atol=1e-8)

    # ... and the trainer adds exactly this penalty to the training loss.
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    with torch.no_grad():
        plain = model(**batch).loss
        total = trainer.compute_loss(model, batch)
    torch.testing.assert_close(total - plain, trainer.strategy.penalty(model).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["l2sp", "l1sp"])
def test_sp_turns_weight_decay_off_for_penalised_tensors(strategy, tiny_model, tiny_dataset, tmp_path):
    trainer, _ = make_trainer(strategy, tiny_model, tiny_dataset, tmp_path, weight_decay=0.1)
    optimizer = trainer.create_optimizer()
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    penalised = set(trainer.strategy.backbone_names) | set(trainer.strategy.head_names)
    named = dict(trainer.model.named_parameters())
    assert penalised
    assert all(decay[id(named[name])] == 0 for name in penalised)
    assert len(decay) == len(named), "every parameter is in the optimizer"


def test_sp_anchor_is_the_pretrained_weights(tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer("l2sp", tiny_model, tiny_dataset, tmp_path, epochs=1)
    trainer.train()
    for name, anchor in zip(trainer.strategy.backbone_names, trainer.strategy.anchor, strict=True):
        assert torch.equal(anchor, snaps.states[0][name])
    assert trainer.strategy.penalty(trainer.model) > 0


def test_auto_rgn_rates_are_base_times_rgn_over_max_with_the_scheduler(tiny_model, tiny_dataset, tmp_path):
    base_lr = 0.01
    trainer, _ = make_trainer(
        "auto_rgn",
        tiny_model,
        tiny_dataset,
        tmp_path,
        learning_rate=base_lr,
        lr_scheduler_type="linear",
        warmup_steps=4,
        rgn_batches=2,
    )
    model = trainer.model
    trainer.create_optimizer_and_scheduler(num_training_steps=20)
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    # Independent measurement on the same batches: mean over batches of ‖∇w‖ / ‖w‖.
    named = dict(model.named_parameters())
    norm_owned = {
        f"{m}.{p}"
        for m, mod in model.named_modules()
        if isinstance(mod, torch.nn.BatchNorm2d)
        for p in ("weight", "bias")
    }
    names = [n for n in named if n not in norm_owned]
    sums = dict.fromkeys(names, 0.0)
    with isolated_rng(derived_seed(0, 0)):  # the RNG the trainer gives the measurement at epoch 0, seed 0
        batches = list(trainer._measurement_batches(2))
    model.train()
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        for n in names:
            sums[n] += (named[n].grad.norm() / named[n].norm()).item() / len(batches)
    model.zero_grad()
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    zero = {n for n in names if not named[n].any()}
    assert "timm_model.classifier.bias" in zero, "the new head's bias starts at zero"
    top = max(v for n, v in sums.items() if n not in zero)
    expected = {n: 1.0 if n in zero else v / top for n, v in sums.items()}

    trainer.begin_strategy_epoch(0)
    groups = trainer.optimizer.param_groups
    assert [g["params"][0] for g in groups] == [named[n] for n in names], "one group per non-BatchNorm tensor"
    scheduler = trainer.lr_scheduler
    for step in range(8):
        schedule = base_lr * min(1.0, step / 4) if step < 4 else base_lr * (20 - step) / 16
        for name, group in zip(names, groups, strict=True):
            assert group["lr"] == pytest.approx(schedule * expected[name], rel=1e-4, abs=1e-12)
        trainer.optimizer.step()
        scheduler.step()
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), f"measuring changed {name}"


def test_auto_rgn_trains_and_leaves_batchnorm_parameters_alone(tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer("auto_rgn", tiny_model, tiny_dataset, tmp_path, epochs=2)
    trainer.train()
    strategy = trainer.strategy
    norm_params = [n for n, _ in trainer.model.named_parameters() if n not in strategy.names]
    assert norm_params
    assert not any(changed(snaps.states[0], snaps.states[-1], norm_params).values())
    assert any(changed(snaps.states[0], snaps.states[-1], strategy.names).values())
    assert len(strategy.history) == 2
    for epoch in strategy.history:
        assert len(epoch["blocks"]) == len(strategy.layout.blocks)
        assert all(0 < value <= 1 for value in [*epoch["blocks"], epoch["head"]])
