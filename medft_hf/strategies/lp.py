"""`lp`: linear probing: only the classifier layers train on top of a frozen pretrained backbone."""

from collections.abc import Sequence

from .base import Strategy, register_strategy


@register_strategy
class LinearProbing(Strategy):
    """The backbone is a fixed feature extractor: its weights and BatchNorm statistics never change."""

    name = "lp"
    summary = "linear probing: only the classifier layers train; the backbone and its BatchNorm stay fixed"
    reference = "Kumar et al. 2022, 'Fine-Tuning can Distort Pretrained Features', ICLR (as the LP baseline)"
    changes_trainable_set = True
    only_freezes = True

    def frozen_blocks(self, epoch: int) -> Sequence[int]:
        return range(len(self.layout.blocks))
