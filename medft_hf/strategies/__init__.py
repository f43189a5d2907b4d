"""The paper's eight fine-tuning strategies, one module each, in one registry (`STRATEGIES`).

Adding one: write a module with a `Strategy` subclass decorated with `@register_strategy` (and a config
dataclass with its flags and their defaults, if it has any) and import it here.
"""

# Registration order is the paper's eight in its order, which `--help` and the study follow, then those that came
# after it.
from . import ft, lp, lpft, gradual_unfreezing, sp, auto_rgn  # noqa: I001
from . import llrd, head_lr, bitfit, lora, surgical
from .base import (
    STRATEGIES,
    Phase,
    Strategy,
    StrategyConfig,
    build_strategy,
    check_run_length,
    coinciding_strategies,
    register_strategy,
)


def strategy_config_classes() -> list[type[StrategyConfig]]:
    """Every distinct config dataclass, for the command-line parser (strategies may share one)."""
    return list(
        dict.fromkeys(cls.config_class for cls in STRATEGIES.values() if cls.config_class is not StrategyConfig)
    )


__all__ = [
    "STRATEGIES",
    "Phase",
    "Strategy",
    "StrategyConfig",
    "auto_rgn",
    "bitfit",
    "build_strategy",
    "check_run_length",
    "coinciding_strategies",
    "ft",
    "gradual_unfreezing",
    "head_lr",
    "llrd",
    "lora",
    "lp",
    "lpft",
    "register_strategy",
    "sp",
    "strategy_config_classes",
    "surgical",
]
