"""What a search explores: strategy × learning rate × augmentation recipe × each strategy's own knobs, and the rungs
(epoch counts) at which configurations are compared.

The knobs come from the strategies' config dataclasses: a strategy is searched over the `KNOBS` its config has, around
its own default (l1sp's α and l2sp's α differ by three orders of magnitude), never below the flag's bound. A train
flag the user passes is fixed, not searched.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import optuna

from ..data import AUGMENTATIONS, DEFAULT_AUGMENTATION
from ..errors import MedftError
from ..modeling import BlockLayout
from ..strategies import STRATEGIES, build_strategy
from ..train import MedftTrainingArguments

LEARNING_RATES = (3e-4, 1e-2)  # searched log-uniformly: AdamW rates that fine-tune a pretrained CNN
DEFAULT_LEARNING_RATE = MedftTrainingArguments.learning_rate


@dataclass(frozen=True)
class Knob:
    """A strategy flag worth searching, log-uniformly over default / span .. default × span. A flag whose default is
    None means "follow --learning_rate" (LP-FT's fine-tuning rate) and is searched over `LEARNING_RATES`."""

    name: str
    span: float = 10.0


KNOBS = (Knob("sp_alpha"), Knob("ft_learning_rate"))


def _own_default(strategy: str, knob: Knob) -> float | None:
    cls = STRATEGIES[strategy]
    return cls.defaults.get(knob.name, next(f.default for f in fields(cls.config_class) if f.name == knob.name))


def _knob_range(strategy: str, knob: Knob) -> tuple[float, float]:
    """(low, high) of `knob` for `strategy`, from its config dataclass, its defaults and its bounds."""
    cls = STRATEGIES[strategy]
    default = _own_default(strategy, knob)
    if default is None:
        return LEARNING_RATES
    low, high = default / knob.span, default * knob.span
    relation, limit = cls.config_class.bounds.get(knob.name, (">=", 0.0))
    if low < limit or (relation == ">" and low == limit):
        raise MedftError(f"{strategy}: the searched range of --{knob.name} crosses its bound {relation} {limit:g}.")
    return low, high


def min_epochs(strategy: str, given: dict[str, Any], layout: BlockLayout, limit: int) -> int:
    """The fewest epochs `strategy` accepts with the flags the user gave, else its defaults (LP-FT needs one epoch of
    LP and one of FT; with --lp_epochs 3, four)."""
    config = STRATEGIES[strategy].config_class.from_flags(given)
    errors = []
    for epochs in range(1, limit + 1):
        try:
            build_strategy(strategy, config, layout, epochs)
        except MedftError as error:
            errors.append(str(error))
            continue
        return epochs
    raise MedftError(f"--strategies {strategy}: cannot run in {limit} epochs ({errors[-1]}).")


def rung_epochs(final_epochs: int, first: int, reduction_factor: int) -> list[int]:
    """Epoch counts final / η^k down to `first`: each rung a complete schedule, about η times longer than the last."""
    rungs = {final_epochs}
    power = 1
    while min(rungs) > first:
        rungs.add(max(first, round(final_epochs / reduction_factor**power)))
        power += 1
    return sorted(rungs)


@dataclass(frozen=True)
class SearchSpace:
    strategies: tuple[str, ...]
    fixed: frozenset[str]  # train flags the user passed: not searched
    rungs: tuple[int, ...]
    reduction_factor: int
    learning_rate: float = DEFAULT_LEARNING_RATE  # the run's, which a knob defaulting to None follows

    @classmethod
    def build(
        cls, strategies: list[str], given: dict[str, Any], layout: BlockLayout, final_epochs: int, reduction_factor: int
    ) -> SearchSpace:
        unknown = [name for name in strategies if name not in STRATEGIES]
        if unknown or not strategies:
            raise MedftError(f"--strategies {' '.join(strategies)}: choose among {', '.join(STRATEGIES)}.")
        searched = {"learning_rate", "augmentation", *(knob.name for knob in KNOBS)}
        first = max(min_epochs(name, given, layout, final_epochs) for name in strategies)
        for name in strategies:
            for knob in KNOBS:
                if knob.name not in given and _has(name, knob):
                    _knob_range(name, knob)  # refused here, before anything is written
        return cls(
            tuple(dict.fromkeys(strategies)),
            frozenset(searched & set(given)),
            tuple(rung_epochs(final_epochs, first, reduction_factor)),
            reduction_factor,
            given.get("learning_rate", DEFAULT_LEARNING_RATE),
        )

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The train flags of the configuration this trial samples (knob parameters are named `strategy.flag`)."""
        strategy = trial.suggest_categorical("strategy", self.strategies)
        flags: dict[str, Any] = {"strategy": strategy}
        if "learning_rate" not in self.fixed:
            flags["learning_rate"] = trial.suggest_float("learning_rate", *LEARNING_RATES, log=True)
        if "augmentation" not in self.fixed:
            flags["augmentation"] = trial.suggest_categorical("augmentation", list(AUGMENTATIONS))
        for knob in self.knobs(strategy):
            low, high = _knob_range(strategy, knob)
            flags[knob.name] = trial.suggest_float(f"{strategy}.{knob.name}", low, high, log=True)
        return flags

    def knobs(self, strategy: str) -> list[Knob]:
        return [knob for knob in KNOBS if knob.name not in self.fixed and _has(strategy, knob)]

    def starting_points(self) -> list[dict[str, Any]]:
        """One configuration per strategy at the library's defaults: every strategy is tried at least once."""
        points = []
        for strategy in self.strategies:
            point: dict[str, Any] = {"strategy": strategy}
            if "learning_rate" not in self.fixed:
                point["learning_rate"] = DEFAULT_LEARNING_RATE
            if "augmentation" not in self.fixed:
                point["augmentation"] = DEFAULT_AUGMENTATION
            point.update({f"{strategy}.{k.name}": self._default(strategy, k) for k in self.knobs(strategy)})
            points.append(point)
        return points

    def _default(self, strategy: str, knob: Knob) -> float:
        """The knob's value when the user leaves it alone: its own default, or (a None default, e.g. LP-FT's
        fine-tuning rate) the run's learning rate, brought inside the searched range."""
        default = _own_default(strategy, knob)
        if default is not None:
            return default
        low, high = _knob_range(strategy, knob)
        return min(max(self.learning_rate, low), high)

    def pruning_step(self, rung: int) -> int:
        """Rung k is reported to Optuna at step η^k, where its successive-halving pruner (min_resource 1) puts it."""
        return self.reduction_factor**rung


def _has(strategy: str, knob: Knob) -> bool:
    return knob.name in {f.name for f in fields(STRATEGIES[strategy].config_class)}


def flags_of(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as train flags (`l1sp.sp_alpha` -> `sp_alpha`)."""
    return {name.split(".")[-1]: value for name, value in params.items()}
