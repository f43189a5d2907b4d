"""`llrd`: layer-wise learning-rate decay: every layer trains, each at `layer_decay` times the rate of the next
deeper one, the head at the base rate (the BEiT / ConvNeXt / timm fine-tuning recipe; Clark et al. 2020, Bao et al.
2022). Early, generic features move least."""

from dataclasses import dataclass, field
from typing import Any, ClassVar

from timm.optim import param_groups_layer_decay
from torch import nn

from ..errors import MedftError
from .base import Strategy, StrategyConfig, register_strategy


@dataclass
class LayerDecayConfig(StrategyConfig):
    layer_decay: float = field(
        default=0.75,
        metadata={"help": "llrd: each layer's rate is this times the next deeper layer's (timm's layers; head: 1)."},
    )
    bounds: ClassVar[dict[str, tuple[str, float]]] = {"layer_decay": (">", 0)}


@register_strategy
class LayerwiseLearningRateDecay(Strategy):
    """timm's `param_groups_layer_decay` over the backbone's fine-grained layers: groups carry their `lr_scale`."""

    name = "llrd"
    summary = "layer-wise learning-rate decay: rate × --layer_decay per layer below the head"
    reference = "Clark et al. 2020 (ELECTRA, ICLR); Bao et al. 2022 (BEiT, ICLR); timm's param_groups_layer_decay"
    config_class = LayerDecayConfig

    def check(self, num_epochs: int) -> None:
        super().check(num_epochs)
        if self.config.layer_decay > 1:
            raise MedftError(f"--layer_decay {self.config.layer_decay}: must be at most 1 (deeper layers fastest).")

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        return param_groups_layer_decay(model.timm_model, weight_decay, layer_decay=self.config.layer_decay)
