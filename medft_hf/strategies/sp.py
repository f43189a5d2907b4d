"""`l2sp` / `l1sp`: regularise towards the pretrained starting point (Li et al. 2018, "Explicit Inductive Bias
for Transfer Learning with Convolutional Networks", ICML).

loss + α/2·‖w − w⁰‖² (L2-SP) or α·‖w − w⁰‖₁ (L1-SP) over every pretrained conv/linear weight (the backbone, and
pretrained classifier layers such as VGG's fc6/fc7), w⁰ the pretrained weights, + β/2·‖w_new‖² on the new
classifier only, as in Li et al. Weight decay is off for the penalised tensors: the penalty replaces it, pulling
towards w⁰ instead of towards 0.
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
        default=None,
        metadata={
            "help": "l2sp/l1sp: α, the weight of the distance to the pretrained weights (default: 0.1 for l2sp, "
            "1e-4 for l1sp)."
        },
    )
    sp_beta: float | None = field(
        default=None,
        metadata={
            "help": "l2sp/l1sp: β, the weight of the L2 penalty on the new classifier's weights (default: 0.01)."
        },
    )
    bounds: ClassVar[dict[str, tuple[str, float]]] = {"sp_alpha": (">=", 0), "sp_beta": (">=", 0)}


class StartingPointRegularization(Strategy):
    """Penalise the distance of the backbone's weight matrices/kernels from their pretrained values."""

    config_class = StartingPointConfig
    p: ClassVar[int]  # the penalty is (α/p)·Σ|w − w⁰|^p: p=2 is L2-SP, p=1 is L1-SP

    def setup(self, model: nn.Module) -> None:
        parameters = dict(model.named_parameters())
        self.anchored_names = [name for name in self.layout.pretrained if parameters[name].ndim > 1]
        self.new_names = [name for name in self.layout.new if parameters[name].ndim > 1]
        # w⁰: a copy taken before any step, so a resumed run still anchors to the pretrained weights.
        self.anchor = [parameters[name].detach().clone() for name in self.anchored_names]

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        penalised = set(self.anchored_names) | set(self.new_names)
        return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=penalised)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        parameters = dict(model.named_parameters())
        anchored = [parameters[name] for name in self.anchored_names]
        if self.anchor[0].device != anchored[0].device:
            # Accelerate (or FSDP, DeepSpeed) moved the model after setup: the anchor follows it, once.
            self.anchor = [a.to(p.device) for a, p in zip(self.anchor, anchored, strict=True)]
        new = [parameters[name] for name in self.new_names]
        alpha, beta = self.config.sp_alpha, self.config.sp_beta
        return _StartingPointPenalty.apply(alpha, beta, self.p, self.anchor, len(anchored), *anchored, *new)


class _StartingPointPenalty(torch.autograd.Function):
    """(α/p)·Σ‖w − w⁰‖_p^p + (β/2)·Σ‖v‖² with its gradient written out, α(w − w⁰) or α·sign(w − w⁰) and βv: one
    foreach op per direction over all tensors, where autograd's graph of per-tensor norms and powers made an SP step
    ~6% slower than FT's (docs/performance.md)."""

    @staticmethod
    def forward(ctx, alpha, beta, p, anchor, count, *tensors):
        anchored, new = tensors[:count], tensors[count:]
        distance = torch._foreach_sub(anchored, anchor)
        ctx.save_for_backward(*new)
        ctx.alpha, ctx.beta, ctx.p, ctx.distance = alpha, beta, p, distance
        value = (alpha / p) * torch.stack(torch._foreach_norm(distance, p)).pow(p).sum()
        return value + (beta / 2) * torch.stack(torch._foreach_norm(new, 2)).pow(2).sum()

    @staticmethod
    def backward(ctx, grad):
        # The gradient is written over w − w⁰ in place (no allocation for 4.7 M weights), so it can be taken once.
        anchored, ctx.distance = ctx.distance, None
        if ctx.p == 1:
            torch._foreach_sign_(anchored)
        torch._foreach_mul_(anchored, grad * ctx.alpha)
        new = torch._foreach_mul(list(ctx.saved_tensors), grad * ctx.beta)
        return None, None, None, None, None, *anchored, *new


@register_strategy
class L1SP(StartingPointRegularization):
    name = "l1sp"
    summary = "L1-SP: loss + α·‖w − w⁰‖₁ on pretrained weights + β/2·‖w_new‖² (--sp_alpha, --sp_beta)"
    reference = "Li, Grandvalet & Davoine 2018, 'Explicit Inductive Bias for Transfer Learning with CNNs', ICML"
    p = 1
    # ours for α: Adam rescales the constant-size L1 gradient, so Li et al.'s larger α over-regularises (on a real
    # 4-class set, EfficientNet-Lite0, 64 px, AdamW 1e-3, α = 0.01 lost 0.2 balanced accuracy to FT, 1e-4 matched it)
    defaults: ClassVar[dict[str, float]] = {"sp_alpha": 1e-4, "sp_beta": 0.01}


@register_strategy
class L2SP(StartingPointRegularization):
    name = "l2sp"
    summary = "L2-SP: loss + α/2·‖w − w⁰‖² on pretrained weights + β/2·‖w_new‖² (--sp_alpha, --sp_beta)"
    reference = "Li, Grandvalet & Davoine 2018, 'Explicit Inductive Bias for Transfer Learning with CNNs', ICML"
    p = 2
    defaults: ClassVar[dict[str, float]] = {"sp_alpha": 0.1, "sp_beta": 0.01}  # Li et al. 2018's values
