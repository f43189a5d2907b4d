"""`surgical`: fine-tune one chosen block (and the new classifier), everything else frozen (Lee et al. 2023, the
paper Auto-RGN comes from: which block is best depends on the kind of distribution shift: the first block for
input-level shifts such as a new scanner, later blocks for feature- and output-level shifts)."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import MedftError
from .base import Strategy, StrategyConfig, register_strategy


@dataclass
class SurgicalConfig(StrategyConfig):
    surgical_block: str = field(
        default="first",
        metadata={"help": "surgical: the block that trains: first, last, or its index (0 = the stem)."},
    )


@register_strategy
class SurgicalFineTuning(Strategy):
    name = "surgical"
    summary = "surgical fine-tuning: only --surgical_block and the new classifier train"
    reference = "Lee et al. 2023, 'Surgical Fine-Tuning Improves Adaptation to Distribution Shifts', ICLR"
    config_class = SurgicalConfig
    changes_trainable_set = True
    only_freezes = True

    def block(self) -> int:
        named = {"first": 0, "last": len(self.layout.blocks) - 1}
        return (
            named.get(self.config.surgical_block)
            if self.config.surgical_block in named
            else int(self.config.surgical_block)
        )

    def check(self, num_epochs: int) -> None:
        super().check(num_epochs)
        count = len(self.layout.blocks)
        choice = self.config.surgical_block
        if choice not in ("first", "last") and not (choice.isdigit() and int(choice) < count):
            raise MedftError(
                f"--surgical_block {choice}: choose first, last or a block index from 0 to {count - 1} "
                f"(this backbone has {count} blocks)."
            )

    def frozen_blocks(self, epoch: int) -> Sequence[int]:
        return [index for index in range(len(self.layout.blocks)) if index != self.block()]

    def frozen_tensors(self, epoch: int) -> set[str]:
        """The other blocks and the pretrained classifier layers (VGG's fc6/fc7): of the head, only the new
        classifier trains, as Lee et al. fine-tune one block and nothing else that was pretrained."""
        return super().frozen_tensors(epoch) | (set(self.layout.head) - set(self.layout.new))
