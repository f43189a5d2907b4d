"""`gu_lf` / `gu_fl`: gradual unfreezing, last-to-first (Howard & Ruder 2018) or first-to-last.

The head trains from the start; backbone blocks join one at a time, one more every `unfreeze_every`
epochs. Last-to-first adapts the task-specific deep layers before the generic early ones.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import floor
from typing import Any, ClassVar

from .base import Strategy, StrategyConfig, register_strategy


@dataclass
class GradualUnfreezingConfig(StrategyConfig):
    unfreeze_every: float | None = field(
        default=None,
        metadata={
            "help": "gu_lf/gu_fl: epochs between two unfreezings (fractions allowed; default: spread so every "
            "block is unfrozen by mid-training)."
        },
    )
    bounds: ClassVar[dict[str, tuple[str, float]]] = {"unfreeze_every": (">", 0)}


class GradualUnfreezing(Strategy):
    """Blocks unfreeze in order; at epoch e, floor(e / unfreeze_every) of them train."""

    config_class = GradualUnfreezingConfig
    changes_trainable_set = True
    only_freezes = True
    deepest_first: ClassVar[bool]

    def order(self) -> list[int]:
        """Block indices in the order they unfreeze."""
        indices = range(len(self.layout.blocks))
        return list(reversed(indices)) if self.deepest_first else list(indices)

    def unfreeze_every(self) -> float:
        if self.config.unfreeze_every is not None:
            return self.config.unfreeze_every
        return max(self.num_epochs / 2, 1) / len(self.layout.blocks)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "unfreeze_every": self.unfreeze_every()}

    def num_unfrozen(self, epoch: int) -> int:
        return min(len(self.layout.blocks), floor(epoch / self.unfreeze_every() + 1e-9))

    def frozen_blocks(self, epoch: int) -> Sequence[int]:
        return self.order()[self.num_unfrozen(epoch) :]


@register_strategy
class GradualUnfreezingLastToFirst(GradualUnfreezing):
    name = "gu_lf"
    summary = "gradual unfreezing from the deepest block down to the stem, one more every --unfreeze_every"
    reference = "Howard & Ruder 2018, 'Universal Language Model Fine-tuning for Text Classification', ACL"
    deepest_first = True


@register_strategy
class GradualUnfreezingFirstToLast(GradualUnfreezing):
    name = "gu_fl"
    summary = "gradual unfreezing from the stem up to the deepest block, one more every --unfreeze_every"
    reference = "Davila et al. 2024, arXiv 2406.10050 (the reverse order of Howard & Ruder 2018)"
    deepest_first = False
