"""`head_lr`: full fine-tuning with a larger learning rate for the new classifier, which starts from scratch while
every other layer starts from pretrained values."""

from dataclasses import dataclass, field
from typing import Any, ClassVar

from timm.optim import param_groups_weight_decay
from torch import nn

from .base import Strategy, StrategyConfig, register_strategy


@dataclass
class HeadLRConfig(StrategyConfig):
    head_lr_scale: float = field(
        default=10.0, metadata={"help": "head_lr: the new classifier's rate is --learning_rate times this."}
    )
    bounds: ClassVar[dict[str, tuple[str, float]]] = {"head_lr_scale": (">", 0)}


@register_strategy
class HeadLearningRate(Strategy):
    """timm's weight-decay split, each group cut in two: the new classifier (scaled) and the rest."""

    name = "head_lr"
    summary = "full fine-tuning, the new classifier at --head_lr_scale × the learning rate"
    reference = (
        "a common transfer-learning recipe (e.g. Kornblith et al. 2019, 'Do Better ImageNet Models Transfer Better?')"
    )
    config_class = HeadLRConfig

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        new = {id(p) for name, p in model.named_parameters() if name in set(self.layout.new)}
        groups = []
        for group in param_groups_weight_decay(model, weight_decay):
            for is_new in (False, True):
                params = [p for p in group["params"] if (id(p) in new) == is_new]
                if params:
                    scale = self.config.head_lr_scale if is_new else 1.0
                    groups.append({**group, "params": params, "lr_scale": scale})
        return groups
