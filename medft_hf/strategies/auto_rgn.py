"""`auto_rgn`: surgical fine-tuning with relative gradient norms (Lee et al. 2023, "Surgical Fine-Tuning
Improves Adaptation to Distribution Shifts", ICLR; arXiv 2210.11466).

At the start of every epoch each parameter tensor's gradient is measured on `rgn_batches` training batches;
its learning rate becomes base × RGN / max RGN, RGN = ‖∇w‖ / ‖w‖ (averaged over the batches), so the layers
whose gradients are large relative to their weights train most. As in the official code
(anniesch/surgical-finetuning, main.py): BatchNorm parameters never update (there, left out of the optimizer;
here frozen, so their gradients are not computed or clipped with the others') and Adam's moments
start afresh each epoch (the official code builds a new Adam). Unlike it, the factors multiply the Trainer's
scheduled rate (warm-up and decay still apply), measuring leaves BatchNorm running statistics untouched, and a
tensor that is all zeros (the new head's bias) has no relative norm: it trains at the full rate instead of
dividing by zero (which in the official code turns every other factor into 0).

Lee et al. apply Auto-RGN to a network whose head already exists. In transfer learning the head is new and
small, so its RGN dwarfs every pretrained tensor's and the maximum hands the backbone a few percent of the rate.
`--rgn_head base` (the default, chosen on validation: docs/results/defaults/README.md) trains the new head at
the base rate and takes the maximum over the pretrained tensors only; `--rgn_head official` measures the head
like every other tensor. `--rgn_max_over weights` lets only tensors of two or more dimensions (kernels,
matrices) set the maximum; a bias or other 1-D tensor above it is capped at the base rate. `--rgn_norms train`
and `--rgn_fresh_optimizer false` depart from the official code in the two other places where it differs from
fine-tuning (BatchNorm's scale and shift, Adam's moments), for the ablation in docs/results/auto-rgn.
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from ..modeling import BlockLayout
from .base import LossSource, Strategy, StrategyConfig, register_strategy


@dataclass
class AutoRGNConfig(StrategyConfig):
    rgn_batches: int = field(
        default=5,  # as in the official code
        metadata={"help": "auto_rgn: training batches the relative gradient norms are averaged over."},
    )
    # ours, chosen on validation (docs/results/defaults): the official rule starves the backbone behind a new head
    rgn_head: str = field(
        default="base",
        metadata={
            "help": "auto_rgn: 'base' trains the new head at the base rate and normalises by the largest RGN of "
            "the pretrained tensors; 'official' measures the head like any tensor (Lee et al.'s code).",
            "choices": ["base", "official"],
        },
    )
    rgn_max_over: str = field(
        default="all",
        metadata={
            "help": "auto_rgn: the tensors whose largest RGN is the reference: 'all' or 'weights' (2-D and up).",
            "choices": ["all", "weights"],
        },
    )
    rgn_norms: str = field(
        default="frozen",  # as in the official code
        metadata={
            "help": "auto_rgn: BatchNorm scale and shift 'frozen' (never updated, as in Lee et al.'s code; "
            "the running statistics still follow the data) or 'train' (measured and scaled like any tensor).",
            "choices": ["frozen", "train"],
        },
    )
    rgn_fresh_optimizer: bool = field(
        default=True,  # the official code builds a new Adam every epoch
        metadata={"help": "auto_rgn: restart Adam's moments at every epoch, when the rates are re-measured."},
    )
    bounds: ClassVar[dict[str, tuple[str, float]]] = {"rgn_batches": (">=", 1)}


@register_strategy
class AutoRGN(Strategy):
    name = "auto_rgn"
    summary = "Auto-RGN: each tensor's learning rate ∝ its relative gradient norm, re-measured every epoch"
    reference = "Lee et al. 2023, 'Surgical Fine-Tuning Improves Adaptation to Distribution Shifts', ICLR"
    config_class = AutoRGNConfig
    freezes_norm_statistics = False  # the official code leaves BatchNorm in training mode

    def __init__(self, config: AutoRGNConfig, layout: BlockLayout):
        super().__init__(config, layout)
        self.norm_parameters: set[str] = set()  # known once `setup` has seen the model

    @property
    def resets_optimizer_state(self) -> bool:
        return self.config.rgn_fresh_optimizer

    def setup(self, model: nn.Module) -> None:
        self.norm_parameters = {
            f"{module_name}.{name}"
            for module_name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and self.config.rgn_norms == "frozen"
            for name, _ in module.named_parameters(recurse=False)
        }
        parameters = dict(model.named_parameters())
        for name in self.norm_parameters:  # now, before DDP wraps the model: it never expects their gradients
            parameters[name].requires_grad_(False)
        self.names = [name for name in parameters if name not in self.norm_parameters]
        new = set(self.layout.new)
        self.at_base_rate = {name for name in self.names if name in new} if self.config.rgn_head == "base" else set()
        self.reference = [
            name
            for name in self.names
            if name not in self.at_base_rate and (self.config.rgn_max_over == "all" or parameters[name].ndim > 1)
        ]
        # Per epoch: every tensor's factor (in `names` order), and the mean factor of each block (stem first) and
        # of the head, which is what the factor figure draws.
        self.history: list[dict[str, Any]] = []

    def frozen_tensors(self, epoch: int) -> set[str]:
        """With `rgn_norms frozen`, BatchNorm's scale and shift: frozen, not merely left out of the optimizer, so
        their gradients are neither computed, clipped with the others' (which would shrink every trained tensor's
        step) nor all-reduced by DDP, and they do not count as trainable."""
        return self.norm_parameters

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """One group per tensor (each gets its own rate); with `rgn_norms frozen`, BatchNorm is left out, so it
        never updates."""
        parameters = dict(model.named_parameters())
        decay_rule = param_groups_weight_decay(model, weight_decay)
        decay_of = {id(p): group["weight_decay"] for group in decay_rule for p in group["params"]}
        return [{"params": [parameters[name]], "weight_decay": decay_of[id(parameters[name])]} for name in self.names]

    def lr_scales(self, model: nn.Module, epoch: int, losses: LossSource) -> list[float]:
        rgn = self.relative_gradient_norms(model, losses)
        largest = max((rgn[name] for name in self.reference if rgn[name] == rgn[name]), default=0.0)
        scales = {
            name: 1.0 if name in self.at_base_rate or value != value or largest == 0 else min(1.0, value / largest)
            for name, value in rgn.items()
        }
        self.history.append(
            {
                "blocks": [_mean(scales, block) for block in self.layout.blocks],
                "head": _mean(scales, self.layout.head),
                "factors": [scales[name] for name in self.names],
            }
        )
        return [scales[name] for name in self.names]

    def relative_gradient_norms(self, model: nn.Module, losses: LossSource) -> dict[str, float]:
        """Mean over batches of ‖∇w‖/‖w‖ per tensor (NaN where w = 0), in training mode, leaving every buffer as
        it was."""
        parameters = dict(model.named_parameters())
        tensors = [parameters[name] for name in self.names]
        buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
        gradient_norms = torch.zeros(len(tensors), dtype=torch.float64)
        count = 0
        model.train()
        for loss in losses(self.config.rgn_batches):
            gradients = torch.autograd.grad(loss, tensors, allow_unused=True)
            gradient_norms += torch.stack(
                [torch.zeros(()) if g is None else g.detach().norm().cpu() for g in gradients]
            ).double()
            count += 1
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        weight_norms = torch.stack([w.detach().norm().cpu() for w in tensors]).double()
        rgn = (gradient_norms / count) / weight_norms
        rgn[weight_norms == 0] = float("nan")
        return dict(zip(self.names, rgn.tolist(), strict=True))

    @classmethod
    def state_series(cls, state: dict[str, Any]) -> dict[str, list[float]]:
        """Each block's (stem first) and the head's mean rate factor, per epoch."""
        history = state.get("history", [])
        if not history:
            return {}
        series = {f"block {i}": [epoch["blocks"][i] for epoch in history] for i in range(len(history[0]["blocks"]))}
        return {**series, "head": [epoch["head"] for epoch in history]}

    def epoch_signals(self) -> dict[str, float]:
        if not self.history:
            return {}
        blocks = self.history[-1]["blocks"]
        return {"rgn_factor_backbone_mean": sum(blocks) / len(blocks), "rgn_factor_head": self.history[-1]["head"]}

    def state_dict(self) -> dict[str, Any]:
        return {"tensors": self.names, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = state["history"]


def _mean(scales: dict[str, float], names: tuple[str, ...]) -> float:
    values = [scales[name] for name in names if name in scales]
    return sum(values) / len(values) if values else 0.0
