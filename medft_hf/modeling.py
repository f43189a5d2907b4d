"""Backbones: any timm Hub model (or a local folder in the same layout) as a transformers model.

The result is a `TimmWrapperForImageClassification`, so `save_pretrained`, `from_pretrained`,
`pipeline("image-classification")` and `timm.create_model("local-dir:...")` all work on what we save.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from timm.models import group_parameters
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from .errors import MedftError

DEFAULT_MODEL = "timm/densenet121.tv_in1k"
TIMM_PREFIX = "timm_model."


@dataclass(frozen=True)
class BlockLayout:
    """A backbone cut into timm's coarse parameter groups, ordered from the stem to the last block.

    `head` holds the classifier layers: everything after the last feature block (for VGG that includes
    the pretrained fc6/fc7 `pre_logits`); `new` is the part of it created for this task (timm's classifier), the
    only tensors without pretrained values. Names are those of `model.named_parameters()` on the wrapper.
    """

    blocks: tuple[tuple[str, ...], ...]
    head: tuple[str, ...]
    new: tuple[str, ...]

    @property
    def backbone(self) -> tuple[str, ...]:
        return tuple(name for block in self.blocks for name in block)

    @property
    def pretrained(self) -> tuple[str, ...]:
        """Every tensor that starts from pretrained values (the backbone and, e.g., VGG's fc6/fc7)."""
        return self.backbone + tuple(name for name in self.head if name not in self.new)

    @classmethod
    def from_model(cls, model: TimmWrapperForImageClassification) -> BlockLayout:
        return cls.from_timm(model.timm_model, TIMM_PREFIX, model.config.architecture)

    @classmethod
    def from_timm(cls, timm_model: torch.nn.Module, prefix: str = "", architecture: str = "") -> BlockLayout:
        """The layout of a bare timm model; `prefix` is where it sits in the model whose names are used."""
        groups = [
            tuple(prefix + name for name in names)
            for names in group_parameters(timm_model, timm_model.group_matcher(coarse=True)).values()
        ]
        *blocks, head = groups
        # timm leaves un-matched parameters (the classifier, but also e.g. DenseNet's final `norm5`) in the
        # last group; what sits inside the last feature module belongs to the backbone, not to the head.
        last_feature = prefix + timm_model.feature_info[-1]["module"] + "."
        in_features = tuple(name for name in head if name.startswith(last_feature))
        if in_features:
            blocks[-1] = blocks[-1] + in_features
            head = tuple(name for name in head if name not in in_features)
        classifier = {id(p) for p in timm_model.get_classifier().parameters()}
        new = tuple(prefix + name for name, p in timm_model.named_parameters() if id(p) in classifier)
        if not blocks or not head or not new:
            raise MedftError(
                f"timm's group_matcher for {architecture or type(timm_model).__name__!r} gives no separate "
                "classifier; choose a timm CNN such as resnet50, densenet121, vgg19 or efficientnet."
            )
        return cls(blocks=tuple(blocks), head=head, new=new)


def load_model(model_name_or_path: str, class_names: list[str]) -> TimmWrapperForImageClassification:
    """Load a pretrained timm backbone with a new, small-initialised head for `class_names`.

    The head comes from transformers' `_init_weights` (normal, std = `initializer_range` = 0.02, zero bias):
    timm's own fan-out init starts EfficientNet logits at std ~15, which stalls a linear probe.
    Weights are read from safetensors only; no remote code is ever run.
    """
    local = Path(model_name_or_path)
    if local.exists() and not (local / "config.json").is_file():
        raise MedftError(
            f"--model {model_name_or_path}: the folder has no config.json. Pass a folder in timm Hub layout "
            "(config.json + model.safetensors), e.g. one written by `timm.models.push_to_hf_hub` or by this tool."
        )
    try:
        config = TimmWrapperConfig.from_pretrained(
            model_name_or_path,
            num_labels=len(class_names),
            id2label=dict(enumerate(class_names)),
            label2id={name: i for i, name in enumerate(class_names)},
        )
        # The head size is ours to set; timm repos may also record it in model_args, and timm's config reader
        # rejects the `"model_args": null` that transformers writes by default.
        config.model_args = {k: v for k, v in (config.model_args or {}).items() if k != "num_classes"}
        model = TimmWrapperForImageClassification.from_pretrained(
            model_name_or_path, config=config, ignore_mismatched_sizes=True, use_safetensors=True
        )
    except RepositoryNotFoundError as error:
        raise MedftError(
            f"--model {model_name_or_path}: no such model on the Hugging Face Hub. Use a timm Hub id such as "
            f"{DEFAULT_MODEL} or a local folder in timm Hub layout."
        ) from error
    except (OSError, HfHubHTTPError) as error:
        raise MedftError(
            f"--model {model_name_or_path}: could not be loaded ({_first_line(error)}). If the Hugging Face Hub "
            "is unreachable and no cached copy exists, pass a local folder in timm Hub layout "
            "(config.json + model.safetensors), e.g. --model ../shared/hub/tf_efficientnet_lite0.in1k_mli."
        ) from error
    except ValueError as error:
        raise MedftError(f"--model {model_name_or_path}: not a timm model ({_first_line(error)}).") from error
    return model


def architecture_layout(model_name_or_path: str) -> BlockLayout:
    """The block layout of a backbone from its architecture alone (no weights are read or downloaded beyond the
    config of a local folder): for checks that must stay cheap, such as a study grid's."""
    architecture, timm_model = _architecture_on_meta(model_name_or_path)
    return BlockLayout.from_timm(timm_model, TIMM_PREFIX, architecture)


def architecture_parameter_count(model_name_or_path: str) -> int:
    """The parameters of a backbone with its pretrained (ImageNet) head, from the architecture alone: what a
    saved copy of it weighs, for a study's disk estimate, without reading any weights."""
    return sum(parameter.numel() for parameter in _architecture_on_meta(model_name_or_path)[1].parameters())


def _architecture_on_meta(model_name_or_path: str) -> tuple[str, torch.nn.Module]:
    """The timm architecture name and an instance of it on the meta device (shapes only, no memory)."""
    config_file = Path(model_name_or_path) / "config.json"
    if config_file.is_file():
        architecture = TimmWrapperConfig.from_pretrained(model_name_or_path).architecture
    else:  # a Hub id such as timm/resnet50.tv_in1k names its architecture
        architecture = model_name_or_path.removeprefix("timm/").split(".")[0]
    try:
        with torch.device("meta"):
            return architecture, timm.create_model(architecture, pretrained=False)
    except RuntimeError as error:
        raise MedftError(f"--model {model_name_or_path}: unknown timm architecture {architecture!r}.") from error


def pretrained_source(
    model: TimmWrapperForImageClassification, model_name_or_path: str
) -> tuple[str | None, str | None]:
    """The Hub id the backbone's weights come from and their licence, from timm's own config: a local copy of
    `timm/tf_efficientnet_lite0.in1k` still names it (architecture + pretrained tag), so the card links to it."""
    cfg = model.config.pretrained_cfg or {}
    if not Path(model_name_or_path).exists():
        return model_name_or_path, cfg.get("license")
    tag = cfg.get("tag")
    return (f"timm/{model.config.architecture}.{tag}" if tag else None), cfg.get("license")


def min_image_size(model: TimmWrapperForImageClassification) -> int:
    """The smallest input the architecture accepts: its total down-sampling (DenseNet-121 fails under 32 px)."""
    return int(model.timm_model.feature_info[-1]["reduction"])


def record_input_config(model: TimmWrapperForImageClassification, image_size: int) -> None:
    """Make the saved preprocessing config say what we trained with, so pipeline() and timm resize the same way."""
    cfg = dict(model.config.pretrained_cfg or {})
    for key in ("test_input_size", "test_crop_pct", "num_classes"):
        cfg.pop(key, None)
    cfg.update(input_size=[3, image_size, image_size], crop_pct=1.0, fixed_input_size=False)
    model.config.pretrained_cfg = cfg


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
