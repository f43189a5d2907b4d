"""`l2sp` / `l1sp`: regularise towards the pretrained starting point (Li et al. 2018, "Explicit Inductive Bias
for Transfer Learning with Convolutional Networks", ICML).

loss + α/2·‖w − w⁰‖² (L2-SP) or α·‖w − w⁰‖₁ (L1-SP) over the backbone's conv/linear weights, w⁰ the pretrained
weights, + β/2·‖w_head‖² on the new classifier. Weight decay is off for the penalised tensors: the penalty
replaces it, pulling towards w⁰ instead of towards 0.
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from .base import Strategy, StrategyConfig, register_strategy


@dataclass
class StartingPointConfig(StrategyConfig):
    sp_alpha: float | None = field(
        default=None, metadata={"help": "l2sp/l1sp: α, the weight of the distance to the pretrained weights."}
    )
    sp_beta: float | None = field(
        default=None,
        metadata={"help": "l2sp/l1sp: β, the weight of the L2 penalty on the classifier weights."},
    )


class StartingPointRegularization(Strategy):
    """Penalise the distance of the backbone's weight matrices/kernels from their pretrained values."""

    config_class = StartingPointConfig
    p: ClassVar[int]  # the penalty is (α/p)·Σ|w − w⁰|^p: p=2 is L2-SP, p=1 is L1-SP

    def setup(self, model: nn.Module) -> None:
        parameters = dict(model.named_parameters())
        self.backbone_names = [name for name in self.layout.backbone if parameters[name].ndim > 1]
        self.head_names = [name for name in self.layout.head if parameters[name].ndim > 1]
        # w⁰: a copy taken before any step, so a resumed run still anchors to the pretrained weights.
        self.anchor = [parameters[name].detach().clone() for name in self.backbone_names]

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        penalised = set(self.backbone_names) | set(self.head_names)
        return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=penalised)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        parameters = dict(model.named_parameters())
        alpha, beta = self.config.sp_alpha, self.config.sp_beta
        distance = torch.stack(
            [
                (parameters[name] - anchor).abs().pow(self.p).sum()
                for name, anchor in zip(self.backbone_names, self.anchor, strict=True)
            ]
        ).sum()
        head = torch.stack([parameters[name].pow(2).sum() for name in self.head_names]).sum()
        return (alpha / self.p) * distance + (beta / 2) * head


@register_strategy
class L1SP(StartingPointRegularization):
    name = "l1sp"
    summary = "L1-SP: loss + α·‖w − w⁰‖₁ on the backbone + β/2·‖w_head‖² (--sp_alpha, --sp_beta)"
    reference = "Li, Grandvalet & Davoine 2018, 'Explicit Inductive Bias for Transfer Learning with CNNs', ICML"
    p = 1


@register_strategy
class L2SP(StartingPointRegularization):
    name = "l2sp"
    summary = "L2-SP: loss + α/2·‖w − w⁰‖² on the backbone + β/2·‖w_head‖² (--sp_alpha, --sp_beta)"
    reference = "Li, Grandvalet & Davoine 2018, 'Explicit Inductive Bias for Transfer Learning with CNNs', ICML"
    p = 2
