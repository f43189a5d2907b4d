"""A trial: one configuration trained as ordinary train.py runs at growing epoch counts (its rungs), each in its own
folder, scored on the validation split, and stopped when Optuna's successive-halving pruner ranks it out.

Fairness: every rung run is a complete schedule of that many epochs (LP-FT's linear-probing share, gradual
unfreezing's pace and the learning-rate decay all compressed to it), never the first epochs of a longer run. So at
each rung every strategy is compared after the same training, each having done all it does by design.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from ..results import RunResult, is_finished_run
from ..study import cell_lock, train_resumably
from .budget import Plan
from .space import SearchSpace
from .storage import CLAIM, EPOCHS, ERROR, POLL_S, SECONDS, end, first_number, seconds_per_epoch, spent

OBJECTIVE = "balanced_accuracy"  # of the validation split, at the run's best epoch


def run_once(
    flags: dict[str, Any], folder: Path, make: Callable[[dict[str, Any], Path], RunResult] = train_resumably
) -> tuple[RunResult, float | None]:
    """The run of `flags` in `folder`: made by `make` (trained, resumed from its last checkpoint if one exists), or
    read back when it already finished, also when another worker made it. Returns the result and the seconds spent
    here (None: the run was reused)."""
    while not is_finished_run(folder):
        with cell_lock(folder) as held:
            if held and not is_finished_run(folder):
                start = time.monotonic()
                return make(flags, folder), time.monotonic() - start
        if not held:
            time.sleep(POLL_S)  # another worker trains it
    return RunResult.load(folder), None


def trial_flags(base: dict[str, Any], configuration: dict[str, Any], epochs: int, seed: int) -> dict[str, Any]:
    return {**base, **configuration, "num_train_epochs": epochs, "seed": seed}


class Objective:
    """Optuna's objective: the trial's validation score at the last rung it reaches."""

    def __init__(self, space: SearchSpace, plan: Plan, base_flags: dict[str, Any], trials_dir: Path,
                 on_run: Callable[[], None]):  # fmt: skip
        self.space = space
        self.plan = plan
        self.base_flags = {**base_flags, "skip_test": True}  # trials never see the test split
        self.trials_dir = trials_dir
        self.on_run = on_run  # after every rung run: the progress display

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except (optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as error:  # recorded, so that a rerun does not retry it
            trial.set_user_attr(ERROR, f"{type(error).__name__}: {error}")
            raise

    def _run(self, trial: optuna.Trial) -> float:
        configuration = self.space.suggest(trial)
        name = f"{first_number(trial):03d}-{configuration['strategy']}"
        trial.set_user_attr("folder", name)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # for the audit of shared searches
        study, budget = trial.study, self.plan.budget
        used = {EPOCHS: 0, SECONDS: 0.0}
        score = float("nan")
        for rung, epochs in enumerate(self.space.rungs):
            folder = self.trials_dir / name / f"e{epochs}"
            if not is_finished_run(folder):  # a run an earlier try of this trial finished is read back, for free
                cost = budget.cost(epochs, seconds_per_epoch(study, self.plan.seconds_per_epoch))
                if spent(study, budget.unit) + cost > self.plan.search_budget + 1e-9:
                    trial.set_user_attr("stopped", "budget")
                    end(study, budget)
                    raise optuna.TrialPruned(f"rung of {epochs} epochs does not fit the budget left")
                trial.set_user_attr(CLAIM, cost)
            result, seconds = run_once(trial_flags(self.base_flags, configuration, epochs, seed=0), folder)
            if seconds is not None:
                used = {EPOCHS: used[EPOCHS] + epochs, SECONDS: used[SECONDS] + seconds}
            for key, value in {**used, CLAIM: 0.0}.items():
                trial.set_user_attr(key, value)
            self.on_run()
            score = result.validation[OBJECTIVE]
            trial.report(score, step=self.space.pruning_step(rung))
            if rung < len(self.space.rungs) - 1 and trial.should_prune():
                raise optuna.TrialPruned(f"ranked out after {epochs} epochs")
        return score
