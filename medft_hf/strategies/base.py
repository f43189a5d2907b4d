"""What a fine-tuning strategy is: a small config dataclass plus the hooks the trainer calls.

The recipe and the trainer call, in this order: `check` with the run's epoch count before anything is written,
`prepare_model` before the Trainer exists (it may wrap or replace the model, e.g. with adapters), `setup` once on
that model, `param_groups` to build the optimizer (a group's `lr_scale` multiplies its rate under any schedule),
`phases` to build the learning-rate schedule, `begin_epoch` (which freezes `frozen_tensors`) and `lr_scales` at
every epoch boundary, `prepare_forward` before every training forward, `penalty` to add to every training loss,
and `export_model` before the final save (e.g. merging adapters into a plain model). Hooks receive the bare model
(never a compiled or DDP wrapper), so parameter names are those of `BlockLayout`. A strategy overrides only what it
changes; the defaults are full fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from ..errors import MedftError
from ..modeling import BlockLayout

# The training loss of each of `n` fresh training batches, as the Trainer computes it for one batch (class weights and
# label smoothing included, the strategy's penalty not), each with its graph: what a strategy differentiates to
# measure gradients.
LossSource = Callable[[int], Iterable[torch.Tensor]]


@dataclass
class StrategyConfig:
    """Flags shared by no strategy. Subclasses add theirs, with their defaults; a field left at None takes the
    strategy's own `defaults` (for flags several strategies share with different defaults) or a documented rule.

    `bounds` maps a flag to its lower limit, (">", x) or (">=", x); `check` enforces them and any `choices`.
    """

    bounds: ClassVar[dict[str, tuple[str, float]]] = {}

    def check(self) -> None:
        """Refuse out-of-range values, naming every bad flag at once (argparse checks `choices` on the command
        line, but a config built in Python or from a grid file is never parsed)."""
        problems = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None:
                continue
            relation, limit = self.bounds.get(spec.name, (None, None))
            if (relation == ">" and not value > limit) or (relation == ">=" and not value >= limit):
                problems.append(f"--{spec.name} {value}: must be {relation} {limit:g}")
            choices = spec.metadata.get("choices")
            if choices is not None and value not in choices:
                problems.append(f"--{spec.name} {value}: choose one of {', '.join(map(str, choices))}")
        if problems:
            raise MedftError("; ".join(problems) + ".")

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> StrategyConfig:
        """The config of the flags among `flags` that are this config's fields (train.py flags of a grid or search)."""
        return cls(**{f.name: flags[f.name] for f in fields(cls) if f.name in flags})

    def resolved(self, defaults: dict[str, Any]) -> StrategyConfig:
        """This config with every None that `defaults` has a value for replaced by it."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return type(self)(**{name: defaults.get(name) if value is None else value for name, value in values.items()})


@dataclass(frozen=True)
class Phase:
    """A stretch of training with its own optimisation: at `start_epoch` the optimizer's moments start afresh
    and the learning-rate schedule (warm-up, decay) restarts over the phase's epochs, peaking at `learning_rate`
    (None: the run's --learning_rate) after `warmup_ratio` of the phase (None: the run's warm-up)."""

    start_epoch: int
    learning_rate: float | None = None
    warmup_ratio: float | None = None


class Strategy:
    """Full fine-tuning: every parameter trains from step 0 (the base every other strategy extends)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]] = StrategyConfig
    # Defaults of flags this strategy shares with others but sets differently (e.g. L1-SP's and L2-SP's α).
    defaults: ClassVar[dict[str, Any]] = {}
    # True when the set of trainable tensors changes during training (DDP must then look for unused ones).
    changes_trainable_set: ClassVar[bool] = False
    # True when the optimizer's moments must start afresh at every epoch boundary.
    resets_optimizer_state: ClassVar[bool] = False
    # True when freezing blocks is all the strategy does: two such strategies that freeze the same blocks in
    # every epoch train identically (see `coinciding_strategies`).
    only_freezes: ClassVar[bool] = False
    # False when a BatchNorm layer with frozen scale and shift still updates its running statistics.
    freezes_norm_statistics: ClassVar[bool] = True

    def __init__(self, config: StrategyConfig, layout: BlockLayout):
        self.config = config
        self.layout = layout
        self.num_epochs = 1  # the trainer sets the real number when training starts
        self._frozen_norms: list[nn.Module] = []

    # ---- hooks a strategy may override -------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The config as this run uses it, defaults that follow the epoch count filled in: what results.json, the
        model card and the resume identity record, so a run stays described when such a default changes."""
        return asdict(self.config)

    def check(self, num_epochs: int) -> None:
        """Refuse settings that cannot work for a run of `num_epochs` epochs (MedftError names the flag)."""
        self.config.check()

    def phases(self) -> list[Phase]:
        """The optimisation phases; one by default (one optimizer state and one schedule for the whole run)."""
        return [Phase(0)]

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Before the Trainer exists: return the model to train (this one, changed in place, or a new one). A
        strategy that renames parameters also refreshes `self.layout`."""
        return model

    def export_model(self, model: nn.Module) -> nn.Module:
        """Before the final save: the model as it should be published (a plain timm model `pipeline()` loads)."""
        return model

    @classmethod
    def saves_the_model_it_evaluates(cls) -> bool:
        """Whether the saved model computes what training evaluated: not when `export_model` rewrites it (LoRA
        merges its adapters, which moves logits by rounding), so a saved model tested later would be another."""
        return cls.export_model is Strategy.export_model

    def setup(self, model: nn.Module) -> None:
        """Called once on the pretrained model, before any training step or checkpoint is loaded."""

    def frozen_blocks(self, epoch: int) -> Sequence[int]:
        """Indices into `layout.blocks` whose parameters stay fixed this epoch."""
        return ()

    def frozen_tensors(self, epoch: int) -> set[str]:
        """Names of the parameters that stay fixed this epoch: by default, those of `frozen_blocks(epoch)`."""
        return {name for index in self.frozen_blocks(epoch) for name in self.layout.blocks[index]}

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups over all parameters: timm's split (no decay for biases and norms)."""
        return param_groups_weight_decay(model, weight_decay)

    def lr_scales(self, model: nn.Module, epoch: int, losses: LossSource) -> list[float] | None:
        """Per-group learning-rate factors for this epoch, applied on top of the scheduler; None = all 1."""
        return None

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A regularisation term added to the training loss (before backward, so DDP and AMP see it)."""
        return None

    @classmethod
    def state_series(cls, state: dict[str, Any]) -> dict[str, list[float]]:
        """From a finished run's `strategy_state`: named per-epoch series worth a figure (none by default)."""
        return {}

    def epoch_signals(self) -> dict[str, float]:
        """Scalars worth logging (TensorBoard, Trackio, ...) at the start of each epoch, after `lr_scales`."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # ---- mechanics shared by every strategy ----------------------------------------------------------
    def schedule_signature(self) -> tuple[tuple[int, ...], ...] | None:
        """The blocks frozen in each epoch, for a strategy that does nothing else; None otherwise."""
        if not self.only_freezes:
            return None
        return tuple(tuple(sorted(self.frozen_blocks(epoch))) for epoch in range(self.num_epochs))

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        """Freeze exactly `frozen_tensors(epoch)`, unfreeze everything else; a BatchNorm layer whose parameters are
        all frozen also keeps its running statistics fixed (unless `freezes_norm_statistics` is False)."""
        frozen = self.frozen_tensors(epoch)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name not in frozen)
        if not self.freezes_norm_statistics:
            self._frozen_norms = []
            return
        self._frozen_norms = [
            module
            for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            and any(True for _ in module.parameters(recurse=False))
            and all(f"{name}.{p}" in frozen for p, _ in module.named_parameters(recurse=False))
        ]

    def prepare_forward(self, model: nn.Module) -> None:
        """Keep frozen BatchNorm in eval mode (its running statistics fixed) after the Trainer's model.train()."""
        for module in self._frozen_norms:
            module.eval()


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    if cls.name in STRATEGIES:
        raise ValueError(f"strategy {cls.name!r} is already registered (by {STRATEGIES[cls.name].__qualname__}).")
    STRATEGIES[cls.name] = cls
    return cls


def build_strategy(name: str, config: StrategyConfig | None, layout: BlockLayout, num_epochs: int = 1) -> Strategy:
    """The strategy `name` with `config` (None: its defaults), checked for a run of `num_epochs` epochs."""
    if name not in STRATEGIES:
        raise MedftError(f"--strategy {name}: unknown. Choose one of: {', '.join(STRATEGIES)}.")
    cls = STRATEGIES[name]
    config = cls.config_class() if config is None else config
    if not isinstance(config, cls.config_class):
        raise MedftError(f"--strategy {name} takes a {cls.config_class.__name__}, got {type(config).__name__}.")
    strategy = cls(config.resolved(cls.defaults), layout)
    strategy.num_epochs = num_epochs
    strategy.check(num_epochs)
    return strategy


def check_run_length(strategy: Strategy, num_train_epochs: float, max_steps: int = -1) -> None:
    """A strategy with several phases restarts its schedule at a step computed from whole epochs: a partial last
    epoch (a fractional epoch count, or --max_steps) would move the restart off the real switch."""
    if len(strategy.phases()) > 1 and (max_steps > 0 or num_train_epochs != math.ceil(num_train_epochs)):
        raise MedftError(
            f"--strategy {strategy.name} starts a new optimisation at an epoch boundary: give a whole number of "
            "--num_train_epochs and no --max_steps."
        )


def coinciding_strategies(strategy: Strategy) -> list[str]:
    """The other registered strategies, at their defaults, that would train exactly as `strategy` over its
    `num_epochs` (the same blocks frozen in every epoch and nothing else), e.g. gu_lf and gu_fl at 2 epochs."""
    signature = strategy.schedule_signature()
    if signature is None:
        return []
    return [
        name
        for name, cls in STRATEGIES.items()
        if name != strategy.name
        and cls.only_freezes
        and build_strategy(name, None, strategy.layout, strategy.num_epochs).schedule_signature() == signature
    ]
