"""medft-hf: fine-tune pretrained timm backbones on medical images with the eight strategies compared by
Davila, Colan & Hasegawa (2024, arXiv 2406.10050), on transformers' Trainer."""

from .modeling import BlockLayout, load_model
from .strategies import STRATEGIES, Strategy, StrategyConfig, build_strategy, register_strategy
from .trainer import StrategyTrainer

__version__ = "0.1.0"

__all__ = [
    "STRATEGIES",
    "BlockLayout",
    "Strategy",
    "StrategyConfig",
    "StrategyTrainer",
    "build_strategy",
    "load_model",
    "register_strategy",
]
