"""Each strategy's mechanics, proven on real (tiny) training runs: what trains, what stays bit-identical."""

from __future__ import annotations

import math
import re

import pytest
import torch
import transformers
from conftest import CLASS_NAMES, make_trainer
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from medft_hf.errors import MedftError
from medft_hf.losses import weighted_cross_entropy
from medft_hf.modeling import BlockLayout
from medft_hf.rng import derived_seed, isolated_rng
from medft_hf.strategies import STRATEGIES, build_strategy, coinciding_strategies


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
    assert list(STRATEGIES)[:8] == ["ft", "lp", "lpft", "gu_lf", "gu_fl", "l1sp", "l2sp", "auto_rgn"]


def test_a_second_strategy_under_a_registered_name_is_refused():
    from medft_hf.strategies import Strategy, register_strategy

    class Impostor(Strategy):
        name = "ft"

    with pytest.raises(ValueError, match="'ft' is already registered"):
        register_strategy(Impostor)
    assert STRATEGIES["ft"] is not Impostor


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


def test_lpft_default_lp_share_is_an_eighth_rounded_down_and_recorded_as_used(tiny_model, tiny_dataset, tmp_path):
    """The recorded settings carry the share the run used, not None: results.json, the card and a resume stay
    exact when the default changes (it was a quarter until docs/results/lpft-share)."""
    trainer, _ = make_trainer("lpft", tiny_model, tiny_dataset, tmp_path)
    for epochs, expected in [(2, 1), (4, 1), (6, 1), (8, 1), (15, 1), (16, 2), (20, 2), (30, 3)]:
        trainer.strategy.num_epochs = epochs
        assert trainer.strategy.lp_epochs() == expected
        assert trainer.strategy.settings()["lp_epochs"] == expected
    trainer.strategy.config.lp_share = 0.29  # 100 x 0.29 is 28.999999999999996 in floating point
    trainer.strategy.num_epochs = 100
    assert trainer.strategy.lp_epochs() == 29


def test_a_restarted_schedule_reads_an_absolute_minimum_rate_as_transformers_does(tiny_model, tiny_dataset, tmp_path):
    """LP-FT builds each phase's schedule itself: cosine_with_min_lr's min_lr 1e-4 under a rate of 1e-3 must end the
    phase at a tenth of its peak, as transformers' own schedule does for a one-phase run."""
    trainer, _ = make_trainer("lpft", tiny_model, tiny_dataset, tmp_path, epochs=3, learning_rate=1e-3,
                              lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": 1e-4})  # fmt: skip
    assert trainer._schedule_shape(0, 10)(10) == pytest.approx(0.1)


def test_gradual_unfreezing_records_the_pace_it_used(tiny_model, tiny_dataset, tmp_path):
    trainer, _ = make_trainer("gu_lf", tiny_model, tiny_dataset, tmp_path, epochs=8)
    blocks = len(trainer.strategy.layout.blocks)
    assert trainer.strategy.settings()["unfreeze_every"] == pytest.approx(4 / blocks)


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

    trainer.strategy.anchor = [pretrained[name] for name in trainer.strategy.anchored_names]
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


@pytest.mark.parametrize(
    ("strategy", "find_unused"), [("ft", False), ("l2sp", False), ("auto_rgn", False), ("lp", True), ("gu_lf", True)]
)
def test_ddp_looks_for_unused_parameters_exactly_when_the_strategy_freezes_tensors(
    strategy, find_unused, tiny_model, tiny_dataset, tmp_path
):
    """What the accelerator hands DDP, not the argument: the Trainer reads it while building the accelerator."""
    trainer, _ = make_trainer(strategy, tiny_model, tiny_dataset, tmp_path)
    assert trainer.accelerator.ddp_handler.find_unused_parameters is find_unused


@pytest.mark.parametrize("class_weights", [False, True])
def test_sp_penalty_counts_once_per_optimizer_step_under_gradient_accumulation(
    class_weights, tiny_model, tiny_dataset, tmp_path
):
    """One SGD step (rate 1) over 2 accumulated micro-batches, with β and without: at the start the new head's
    weights w get exactly β·w more of a step, as without accumulation. A class-weighted loss (normalised over the
    whole accumulated batch, so not divided by the Trainer afterwards) once made it 2β·w."""
    beta = 0.5
    settings = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "max_steps": 1, "optim": "sgd"}
    settings |= {"learning_rate": 1.0, "max_grad_norm": 0.0, "weight_decay": 0.0, "lr_scheduler_type": "constant"}
    heads = []
    for run_beta in (beta, 0.0):
        trainer, _ = make_trainer(
            "l2sp", tiny_model, tiny_dataset, tmp_path / str(run_beta), sp_beta=run_beta, **settings
        )
        if class_weights:
            trainer.compute_loss_func = weighted_cross_entropy(torch.ones(len(CLASS_NAMES)))
        start = trainer.model.timm_model.get_classifier().weight.detach().clone()
        trainer.train()
        heads.append(trainer.model.timm_model.get_classifier().weight.detach())
    torch.testing.assert_close(heads[1] - heads[0], beta * start, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("strategy", ["l2sp", "l1sp"])
def test_sp_turns_weight_decay_off_for_penalised_tensors(strategy, tiny_model, tiny_dataset, tmp_path):
    trainer, _ = make_trainer(strategy, tiny_model, tiny_dataset, tmp_path, weight_decay=0.1)
    optimizer = trainer.create_optimizer()
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    penalised = set(trainer.strategy.anchored_names) | set(trainer.strategy.new_names)
    named = dict(trainer.model.named_parameters())
    assert penalised
    assert all(decay[id(named[name])] == 0 for name in penalised)
    assert len(decay) == len(named), "every parameter is in the optimizer"


def test_sp_anchor_is_the_pretrained_weights(tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer("l2sp", tiny_model, tiny_dataset, tmp_path, epochs=1)
    trainer.train()
    for name, anchor in zip(trainer.strategy.anchored_names, trainer.strategy.anchor, strict=True):
        assert torch.equal(anchor, snaps.states[0][name])
    assert trainer.strategy.penalty(trainer.model) > 0


@pytest.mark.parametrize(
    ("rgn_head", "rgn_max_over", "rgn_norms"),
    [("official", "all", "frozen"), ("base", "all", "frozen"), ("base", "weights", "frozen"), ("base", "all", "train")],
)
def test_auto_rgn_rates_are_base_times_rgn_over_max_with_the_scheduler(
    rgn_head, rgn_max_over, rgn_norms, tiny_model, tiny_dataset, tmp_path
):
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
        rgn_head=rgn_head,
        rgn_max_over=rgn_max_over,
        rgn_norms=rgn_norms,
    )
    model = trainer.model
    trainer.create_optimizer_and_scheduler(num_training_steps=20)
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    # Independent measurement on the same batches: mean over batches of ‖∇w‖ / ‖w‖.
    named = dict(model.named_parameters())
    norm_owned = {
        f"{m}.{p}"
        for m, mod in model.named_modules()
        if isinstance(mod, torch.nn.BatchNorm2d) and rgn_norms == "frozen"
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
    head = {"timm_model.classifier.weight", "timm_model.classifier.bias"}
    at_base = zero | (head if rgn_head == "base" else set())
    reference = [n for n in names if n not in at_base and (rgn_max_over == "all" or named[n].ndim > 1)]
    top = max(sums[n] for n in reference)
    expected = {n: 1.0 if n in at_base else min(1.0, v / top) for n, v in sums.items()}
    if rgn_head == "official":
        assert expected["timm_model.classifier.weight"] == 1.0, "with a new head, the head's RGN is the maximum"
    else:
        assert max(expected[n] for n in reference) == 1.0, "a pretrained tensor trains at the base rate"

    trainer.begin_strategy_epoch(0)
    groups = trainer.optimizer.param_groups
    assert [g["params"][0] for g in groups] == [named[n] for n in names], "one group per measured tensor"
    scheduler = trainer.lr_scheduler
    for step in range(8):
        schedule = base_lr * min(1.0, step / 4) if step < 4 else base_lr * (20 - step) / 16
        for name, group in zip(names, groups, strict=True):
            assert group["lr"] == pytest.approx(schedule * expected[name], rel=1e-4, abs=1e-12)
        trainer.optimizer.step()
        scheduler.step()
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), f"measuring changed {name}"


def test_auto_rgn_measures_the_class_weighted_loss_it_trains_on(tiny_model, tiny_dataset, tmp_path):
    weights = torch.tensor([4.0, 0.25, 1.0])
    trainer, _ = make_trainer(
        "auto_rgn", tiny_model, tiny_dataset, tmp_path, rgn_batches=2, loss=weighted_cross_entropy(weights)
    )
    model, strategy = trainer.model, trainer.strategy
    with isolated_rng(derived_seed(0, 0)):
        measured = strategy.relative_gradient_norms(model, trainer._measurement_losses)
    with isolated_rng(derived_seed(0, 0)):  # the same batches, for an independent computation
        batches = list(trainer._measurement_batches(2))
    named = dict(model.named_parameters())

    def rgn(weighted: bool) -> dict[str, float]:
        sums = dict.fromkeys(strategy.names, 0.0)
        model.train()
        for batch in batches:
            model.zero_grad()
            labels = batch["labels"]
            log_p = torch.log_softmax(model(pixel_values=batch["pixel_values"]).logits.float(), -1)
            per_image = -log_p[torch.arange(len(labels)), labels]
            scale = weights[labels] if weighted else torch.ones(len(labels))
            ((per_image * scale).sum() / len(labels)).backward()
            for n in strategy.names:
                sums[n] += (named[n].grad.norm() / named[n].norm()).item() / len(batches)
        return sums

    weighted, unweighted = rgn(weighted=True), rgn(weighted=False)
    pretrained = [n for n in strategy.names if named[n].any()]
    for n in pretrained:
        assert measured[n] == pytest.approx(weighted[n], rel=1e-4), n
    assert any(abs(weighted[n] / unweighted[n] - 1) > 0.01 for n in pretrained), "the weights change the gradients"


def test_auto_rgn_trains_and_leaves_batchnorm_parameters_alone(tiny_model, tiny_dataset, tmp_path):
    trainer, snaps = make_trainer("auto_rgn", tiny_model, tiny_dataset, tmp_path, epochs=2)
    trainer.train()
    strategy = trainer.strategy
    parameters = dict(trainer.model.named_parameters())
    norm_params = [n for n in parameters if n not in strategy.names]
    assert norm_params
    assert not any(changed(snaps.states[0], snaps.states[-1], norm_params).values())
    # Frozen, not only out of the optimizer: no gradient to clip with the trained tensors' or for DDP to all-reduce.
    assert all(not parameters[n].requires_grad and parameters[n].grad is None for n in norm_params)
    trained = sum(parameters[n].numel() for n in strategy.names)
    assert trainer.trainable_per_epoch == {0: trained, 1: trained}
    stats = norm_buffers(trainer.model, norm_params)
    assert all(changed(snaps.states[0], snaps.states[-1], stats).values()), "running statistics follow the data"
    assert any(changed(snaps.states[0], snaps.states[-1], strategy.names).values())
    assert len(strategy.history) == 2
    for epoch in strategy.history:
        assert len(epoch["blocks"]) == len(strategy.layout.blocks)
        assert all(0 < value <= 1 for value in [*epoch["blocks"], epoch["head"]])


@pytest.mark.parametrize("fresh", [True, False])
def test_auto_rgn_restarts_adam_each_epoch_only_when_asked(fresh, tiny_model, tiny_dataset, tmp_path):
    trainer, _ = make_trainer("auto_rgn", tiny_model, tiny_dataset, tmp_path, epochs=2, rgn_fresh_optimizer=fresh)
    trainer.train()  # 3 steps per epoch
    steps = {int(state["step"]) for state in trainer.optimizer.state.values()}
    assert steps == ({3} if fresh else {6})


# ---- LP-FT as two optimisations -------------------------------------------------------------------------------
def test_lpft_fine_tuning_phase_starts_from_fresh_optimizer_state_with_its_own_schedule(
    tiny_model, tiny_dataset, tmp_path
):
    """3 epochs of 3 steps: LP for 1 epoch at 1e-2 (cosine over its 3 steps), then FT at 1e-3 with a 1-step warm-up
    and a cosine decay over the remaining 6 steps; Adam's moments are empty when the FT phase begins."""
    trainer, _ = make_trainer(
        "lpft", tiny_model, tiny_dataset, tmp_path, epochs=3, lp_epochs=1, learning_rate=1e-2,
        ft_learning_rate=1e-3, ft_warmup_ratio=1 / 6,
    )  # fmt: skip
    rates, moments = [], []

    class Probe(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            rates.append(trainer.optimizer.param_groups[0]["lr"])
            moments.append(sum(len(s) > 0 for s in trainer.optimizer.state.values()))

    trainer.add_callback(Probe())
    trainer.train()
    lp = [1e-2 * 0.5 * (1 + math.cos(math.pi * step / 3)) for step in range(3)]
    ft = [1e-3 * step / 1 if step < 1 else 1e-3 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 5)) for step in range(6)]
    assert rates == pytest.approx(lp + ft, rel=1e-6, abs=1e-12)
    head_only = len(trainer.strategy.layout.head)
    assert moments[1] == head_only, "during LP only the head has Adam state"
    assert moments[3] == 0, "the FT phase starts with no Adam state at all (the head's moments are dropped too)"
    assert moments[4] == len(list(trainer.model.parameters())), "then every tensor gets fresh moments"


@pytest.mark.parametrize(
    ("epochs", "flags", "message"),
    [
        (1, {}, "lpft needs at least 2 epochs"),
        (4, {"lp_epochs": 4}, "--lp_epochs 4: must be below --num_train_epochs 4"),
        (4, {"lp_epochs": 0}, "--lp_epochs 0: must be >= 1"),
        (8, {"lp_share": 1.0}, "--lp_share 1.0: must be below 1"),
        (8, {"lp_share": 0.0}, "--lp_share 0.0: must be > 0"),
        (4, {"ft_learning_rate": 0.0}, "--ft_learning_rate 0.0: must be > 0"),
        (4, {"ft_warmup_ratio": 1.0}, "--ft_warmup_ratio 1.0: must be below 1"),
    ],
)
def test_lpft_refuses_settings_that_turn_it_into_something_else(epochs, flags, message, tiny_model):
    from medft_hf.strategies.lpft import LPFTConfig

    layout = _layout(tiny_model)
    with pytest.raises(MedftError, match=re.escape(message)):
        build_strategy("lpft", LPFTConfig(**flags), layout, epochs)


# ---- checked flags and schedules that coincide ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("strategy", "flags", "message"),
    [
        ("gu_lf", {"unfreeze_every": 0.0}, "--unfreeze_every 0.0: must be > 0"),
        ("auto_rgn", {"rgn_batches": 0}, "--rgn_batches 0: must be >= 1"),
        ("auto_rgn", {"rgn_head": "ours"}, "--rgn_head ours: choose one of base, official"),
        ("l2sp", {"sp_alpha": -1.0, "sp_beta": -0.5}, "--sp_alpha -1.0: must be >= 0; --sp_beta -0.5: must be >= 0"),
    ],
)
def test_out_of_range_strategy_flags_are_refused_naming_each(strategy, flags, message, tiny_model):
    config_class = STRATEGIES[strategy].config_class
    with pytest.raises(MedftError, match=re.escape(message)):
        build_strategy(strategy, config_class(**flags), _layout(tiny_model), 8)


def test_coinciding_schedules_are_found_exactly_where_they_coincide(tiny_model):
    layout = _layout(tiny_model)

    def alike(name: str, epochs: int) -> list[str]:
        return coinciding_strategies(build_strategy(name, None, layout, epochs))

    assert alike("lp", 1) == ["gu_lf", "gu_fl"]
    assert alike("gu_lf", 2) == ["gu_fl"]
    assert alike("gu_fl", 8) == []
    assert alike("ft", 1) == []
    assert alike("l2sp", 1) == [], "a penalty makes a strategy different whatever it freezes"
    assert alike("lpft", 2) == [], "LP-FT restarts its optimisation, which no freezing schedule does"


# ---- L2-SP / L1-SP: what is anchored, on which device -----------------------------------------------------------
def test_sp_anchors_every_pretrained_weight_and_puts_beta_on_the_new_layer_only():
    """VGG's fc6/fc7 (timm's pre_logits) are pretrained: they get the α pull to w⁰, not the β pull to 0."""
    with torch.device("meta"):
        model = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="vgg11", num_labels=3))
    layout = BlockLayout.from_model(model)
    strategy = build_strategy("l2sp", None, layout, 4)
    strategy.setup(model)
    assert strategy.new_names == ["timm_model.head.fc.weight"]
    pre_logits = {n for n, p in model.named_parameters() if n.startswith("timm_model.pre_logits.") and p.ndim > 1}
    assert len(pre_logits) == 2
    assert pre_logits <= set(layout.head), "fc6/fc7 count as classifier layers (LP trains them) ..."
    assert pre_logits <= set(strategy.anchored_names), "... but are anchored to their pretrained values"
    convs = {n for n, p in model.named_parameters() if n.startswith("timm_model.features.") and p.ndim > 1}
    assert set(strategy.anchored_names) == convs | pre_logits


def test_surgical_freezes_vggs_pretrained_classifier_layers_with_the_other_blocks():
    with torch.device("meta"):
        model = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="vgg11", num_labels=3))
    layout = BlockLayout.from_model(model)
    strategy = build_strategy("surgical", None, layout, 4)
    frozen = strategy.frozen_tensors(0)
    trainable = {name for name, _ in model.named_parameters()} - frozen
    assert trainable == set(layout.blocks[0]) | set(layout.new)
    assert {name for name in layout.head if name.startswith("timm_model.pre_logits.")} <= frozen


def test_sp_anchor_follows_the_model_to_its_device(tiny_model, tiny_dataset, tmp_path):
    trainer, _ = make_trainer("l2sp", tiny_model, tiny_dataset, tmp_path)
    trainer.model.to("meta")  # what Accelerate does on a GPU, FSDP or DeepSpeed after the strategy's setup
    assert trainer.strategy.penalty(trainer.model).device.type == "meta"
    assert all(anchor.device.type == "meta" for anchor in trainer.strategy.anchor)


def test_auto_rgn_records_every_tensors_factor_each_epoch(tiny_model, tiny_dataset, tmp_path):
    trainer, _ = make_trainer("auto_rgn", tiny_model, tiny_dataset, tmp_path, epochs=2, rgn_batches=1)
    trainer.train()
    state = trainer.strategy.state_dict()
    assert state["tensors"] == trainer.strategy.names
    for epoch in state["history"]:
        factors = dict(zip(state["tensors"], epoch["factors"], strict=True))
        assert factors["timm_model.classifier.weight"] == 1.0, "the new head trains at the base rate (default)"
        assert max(factors[n] for n in state["tensors"] if n not in trainer.strategy.layout.new) == 1.0


def _layout(model_dir) -> BlockLayout:
    from medft_hf.modeling import load_model

    return BlockLayout.from_model(load_model(str(model_dir), ["a", "b", "c"]))
