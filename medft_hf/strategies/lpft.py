"""`lpft`: linear probing, then full fine-tuning from the probed head (Kumar et al. 2022).

A good head first means the backbone's features are not distorted by gradients from a random head.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from .base import Strategy, StrategyConfig, register_strategy


@dataclass
class LPFTConfig(StrategyConfig):
    lp_epochs: int | None = field(
        default=None,
        metadata={"help": "lpft: epochs of linear probing before full fine-tuning (default: a quarter, >= 1)."},
    )


@register_strategy
class LinearProbingThenFineTuning(Strategy):
    """LP for `lp_epochs` epochs, then every layer trains, starting from the probed head."""

    name = "lpft"
    summary = "linear probing for --lp_epochs, then full fine-tuning from the probed head"
    reference = "Kumar et al. 2022, 'Fine-Tuning can Distort Pretrained Features', ICLR"
    config_class = LPFTConfig
    changes_trainable_set = True

    def lp_epochs(self) -> int:
        if self.config.lp_epochs is not None:
            return self.config.lp_epochs
        return max(1, round(self.num_epochs / 4))

    def frozen_blocks(self, epoch: int) -> Sequence[int]:
        return range(len(self.layout.blocks)) if epoch < self.lp_epochs() else ()
