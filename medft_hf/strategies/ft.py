"""`ft`: full fine-tuning, the paper's baseline: all parameters train from the first step."""

from .base import Strategy, register_strategy


@register_strategy
class FullFineTuning(Strategy):
    """All layers train from step 0, the pretrained weights only as the starting point."""

    name = "ft"
    summary = "full fine-tuning: every layer trains from the first step"
    reference = "Davila et al. 2024, arXiv 2406.10050 (baseline)"
    only_freezes = True
