"""`lora`: low-rank adapters (Hu et al. 2022) on the backbone's convolutions and linear layers, through `peft`; the
pretrained weights stay frozen, the adapters and the new classifier train. At export the adapters are merged into
the weights, so the saved model is a plain `TimmWrapperForImageClassification` that `pipeline()`, `timm` and the
Space load like any other."""

from dataclasses import dataclass, field
from typing import ClassVar

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..errors import MedftError
from ..modeling import BlockLayout
from .base import Strategy, StrategyConfig, register_strategy


@dataclass
class LoRAConfig(StrategyConfig):
    lora_r: int = field(default=8, metadata={"help": "lora: the adapters' rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "lora: the adapters' scale is lora_alpha / lora_r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "lora: dropout on the adapters' input."})
    bounds: ClassVar[dict[str, tuple[str, float]]] = {"lora_r": (">=", 1), "lora_alpha": (">", 0),
                                                       "lora_dropout": (">=", 0)}  # fmt: skip


@register_strategy
class LoRA(Strategy):
    name = "lora"
    summary = "LoRA adapters (peft) on the backbone's conv/linear layers; merged into the weights at export"
    reference = "Hu et al. 2022, 'LoRA: Low-Rank Adaptation of Large Language Models', ICLR (via peft)"
    config_class = LoRAConfig
    changes_trainable_set = True

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Wrap every pretrained convolution (depthwise ones excepted: peft has no grouped LoRA) and linear layer."""
        new = set(self.layout.new)
        targets = [
            name
            for name, module in model.named_modules()
            if (isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1))
            and f"{name}.weight" not in new
        ]
        config = LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=targets,
        )
        model = inject_adapter_in_model(config, model)
        # peft marks only the adapters trainable; here `frozen_tensors` decides that at every epoch, and the
        # optimizer must hold every tensor (the new classifier included) from the start.
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        self.layout = BlockLayout.from_model(model)  # adapters renamed the wrapped layers' tensors
        new = set(self.layout.new)
        self.frozen = {name for name, _ in model.named_parameters() if "lora_" not in name and name not in new}
        return model

    def check(self, num_epochs: int) -> None:
        super().check(num_epochs)
        if self.config.lora_dropout >= 1:
            raise MedftError(f"--lora_dropout {self.config.lora_dropout}: must be below 1 (a probability).")

    def frozen_tensors(self, epoch: int) -> set[str]:
        return self.frozen

    def export_model(self, model: nn.Module) -> nn.Module:
        """Merge each adapter into its layer's weight and put the plain layer back in its place."""
        for name, module in list(model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, module.get_base_layer())
        return model
