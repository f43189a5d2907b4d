"""medft-hf: fine-tune pretrained timm backbones on medical images with the eight strategies compared by
Davila, Colan & Hasegawa (2024, arXiv 2406.10050), on transformers' Trainer.

The public names are imported on first use, so that a light module (e.g. `medft_hf.images`, which the Space
uses) does not pull in the training stack.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BlockLayout": "modeling",
    "load_model": "modeling",
    "STRATEGIES": "strategies",
    "Strategy": "strategies",
    "StrategyConfig": "strategies",
    "build_strategy": "strategies",
    "register_strategy": "strategies",
    "StrategyTrainer": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medft_hf' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
