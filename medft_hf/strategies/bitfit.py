"""`bitfit`: only the bias terms (and the new classifier) train (Ben Zaken, Ravfogel & Goldberg 2022). In a CNN whose
convolutions have no bias, that is BatchNorm's shift; a BatchNorm layer whose shift trains keeps updating its running
statistics."""

from .base import Strategy, register_strategy


@register_strategy
class BitFit(Strategy):
    name = "bitfit"
    summary = "BitFit: only the biases and the new classifier train"
    reference = "Ben Zaken, Ravfogel & Goldberg 2022, 'BitFit: Simple Parameter-efficient Fine-tuning', ACL"
    changes_trainable_set = True  # frozen from the first step: DDP must expect tensors without gradients

    def frozen_tensors(self, epoch: int) -> set[str]:
        new = set(self.layout.new)
        return {
            name for name in self.layout.backbone + self.layout.head if not name.endswith(".bias") and name not in new
        }
