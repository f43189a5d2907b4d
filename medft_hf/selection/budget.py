"""A search budget: training epochs summed over every run (`60ep`), or worker seconds of training (`30m`, `2h`).

Both units are spent by the same runs: the search's rung runs, then the chosen configuration's final runs (one per
seed). The final runs are reserved first, so a search never eats the model it exists to choose.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import MedftError

_UNITS = {"ep": "epochs", "s": "seconds", "m": "seconds", "h": "seconds"}
_SECONDS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Budget:
    amount: float
    unit: str  # "epochs" or "seconds"

    @classmethod
    def parse(cls, text: str) -> Budget:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ep|s|m|h)\s*", text or "")
        if not match or float(match[1]) <= 0:
            raise MedftError(
                f"--budget {text}: expected a positive number of epochs (60ep) or a duration (90s, 30m, 2h)."
            )
        value, suffix = float(match[1]), match[2]
        return cls(value * _SECONDS.get(suffix, 1), _UNITS[suffix])

    def cost(self, epochs: float, seconds_per_epoch: float) -> float:
        """What training `epochs` epochs spends, in this budget's unit."""
        return epochs if self.unit == "epochs" else epochs * seconds_per_epoch

    def describe(self, amount: float | None = None) -> str:
        amount = self.amount if amount is None else amount
        if self.unit == "epochs":
            return f"{math.ceil(amount - 1e-9)}ep"
        minutes = math.ceil(amount / 60 - 1e-9)
        return f"{minutes}m" if minutes < 120 else f"{minutes / 60:.1f}h"


@dataclass(frozen=True)
class Plan:
    """How a budget is split: `final_seeds` final runs of `final_epochs` each are reserved, the rest is searched."""

    budget: Budget
    final_epochs: int
    final_seeds: int
    seconds_per_epoch: float

    @property
    def final_cost(self) -> float:
        return self.budget.cost(self.final_epochs * self.final_seeds, self.seconds_per_epoch)

    @property
    def search_budget(self) -> float:
        return self.budget.amount - self.final_cost


def plan(
    budget: Budget, first_rung_epochs: int, num_strategies: int, final_epochs: int, seeds: int, seconds_per_epoch: float
) -> Plan:
    """As many final seeds as fit (up to `seeds`) after every strategy's first rung; refuses a budget too small for
    that with one final seed, naming the smallest that would do."""
    search_minimum = budget.cost(first_rung_epochs * num_strategies, seconds_per_epoch)
    for final_seeds in range(seeds, 0, -1):
        candidate = Plan(budget, final_epochs, final_seeds, seconds_per_epoch)
        if candidate.search_budget >= search_minimum - 1e-9:
            return candidate
    minimum = search_minimum + budget.cost(final_epochs, seconds_per_epoch)
    estimate = "" if budget.unit == "epochs" else f" at about {seconds_per_epoch:.1f} s per epoch (measured)"
    raise MedftError(
        f"--budget {budget.describe()} is too small to try each of the {num_strategies} strategies once "
        f"({first_rung_epochs} epochs each) and then train the chosen one for {final_epochs} epochs{estimate}. "
        f"It needs at least --budget {budget.describe(minimum)}; or search fewer --strategies or lower "
        "--num_train_epochs."
    )
