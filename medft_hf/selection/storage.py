"""The search's memory: an Optuna study in a database (SQLite in the output folder by default, or any SQLAlchemy URL
that several workers share), holding every trial's parameters, rung scores and the budget it spent.

A trial cut short (Ctrl-C, or a worker killed: its heartbeat stops) is queued again with the same parameters under
its first number, so it continues in the same run folders; a trial that raised an error is not retried.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from ..errors import MedftError
from .budget import Budget
from .space import SearchSpace

STUDY_NAME = "medft-select"
HEARTBEAT_S = 30  # a live trial touches the database this often ...
GRACE_S = 120  # ... and one silent for this long belongs to a dead worker
POLL_S = 5.0
SCHEMA_ATTEMPTS = 4  # opening a new database while another worker creates its tables (1, 2, 3 s apart)
# Trial user attributes
RETRY_OF = "retry_of"  # the first number of a trial queued again
ERROR = "error"  # the trial raised: not retried
EPOCHS, SECONDS = "epochs", "seconds"  # training this trial did (runs it reused from an earlier try cost nothing)
CLAIM = "claim"  # the budget of the rung run in progress, so that other workers count it before it ends
# Study user attribute: the --budget (amount and unit) at which a trial's next rung did not fit. The search ends there,
# also when the same command runs again, as it did the first time; a larger --budget goes on.
ENDED_AT = "ended_at_budget"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    attempt = 1
    while True:
        try:
            return _rdb_storage(url)
        except sqlalchemy.exc.DBAPIError as error:
            # Workers starting together on a new database race to create its tables (optuna/optuna#1092): the
            # loser's error passes, the tables are there when it opens the database again.
            if attempt == SCHEMA_ATTEMPTS:
                raise MedftError(f"--storage {url}: the database could not be opened ({error}).") from error
        time.sleep(attempt)
        attempt += 1


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    # Every worker waits for SQLite's lock instead of failing at once when another writes.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat arguments
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=requeue,
            )
        except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as error:
            raise MedftError(f"--storage {url}: not a usable database URL ({error}).") from error


def open_study(
    storage: optuna.storages.RDBStorage, settings: dict[str, Any], space: SearchSpace, reduction_factor: int, seed: int
) -> optuna.Study:
    """The study of these settings: created with one starting point per strategy by the first worker (the database
    decides which), joined by the others and by a rerun; a study of other settings is refused."""
    settings = json.loads(json.dumps(settings))  # as the database gives it back
    options = {
        "storage": storage,
        "study_name": STUDY_NAME,
        # constant_liar: workers sampling at once see each other's running trials and spread out. The seed makes a
        # search run from scratch by one worker repeatable; a worker that joins (another worker's search, or a rerun
        # after an interruption) samples unseeded, or two workers would propose the same configurations.
        "sampler": optuna.samplers.TPESampler(seed=seed, constant_liar=True),
        "pruner": optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=reduction_factor),
    }
    try:
        study = optuna.create_study(direction="maximize", **options)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**{**options, "sampler": optuna.samplers.TPESampler(constant_liar=True)})
        saved = study.user_attrs.get("settings")
        if saved is not None and saved != settings:
            changed = sorted(key for key in {**saved, **settings} if saved.get(key) != settings.get(key))
            raise MedftError(
                f"{storage.url} holds a search with other settings ({', '.join(changed)} differ). Rerun it with "
                "the same flags (a different --budget or --seeds is fine), or use another --output_dir / --storage."
            ) from None
        return study
    study.set_user_attr("settings", settings)
    for point in space.starting_points():
        study.enqueue_trial(point)
    return study


def first_number(trial: FrozenTrial | optuna.Trial) -> int:
    """The number of the first try of this configuration (its run folders are named after it)."""
    return trial.user_attrs.get(RETRY_OF, trial.number)


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue `trial`'s parameters again (Optuna's heartbeat calls this for a trial whose worker died). A worker that
    died before it drew them leaves only those the trial was queued with (a starting point's), or none: then nothing
    was tried, and a new trial under this number would read another configuration's runs back as its own."""
    params = trial.params or trial.system_attrs.get("fixed_params")
    if params:
        study.enqueue_trial(params, user_attrs={RETRY_OF: first_number(trial)})


def requeue_interrupted(study: optuna.Study) -> None:
    """Queue again every configuration whose every try was interrupted (not one that raised an error)."""
    tries: dict[int, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False):
        tries.setdefault(first_number(trial), []).append(trial)
    for group in tries.values():
        if all(t.state == TrialState.FAIL and ERROR not in t.user_attrs for t in group):
            requeue(study, group[-1])


def spent(study: optuna.Study, unit: str) -> float:
    """Budget spent by every worker: what finished runs used, plus the runs in progress."""
    trials = study.get_trials(deepcopy=False)
    used = sum(t.user_attrs.get(EPOCHS if unit == "epochs" else SECONDS, 0.0) for t in trials)
    return used + sum(t.user_attrs.get(CLAIM, 0.0) for t in trials if t.state == TrialState.RUNNING)


def end(study: optuna.Study, budget: Budget) -> None:
    study.set_user_attr(ENDED_AT, {"amount": budget.amount, "unit": budget.unit})
    study.stop()


def ended(study: optuna.Study, budget: Budget) -> bool:
    """Whether the search ended at this --budget or a larger one of the same unit."""
    at = study.user_attrs.get(ENDED_AT)
    return bool(at) and at["unit"] == budget.unit and at["amount"] >= budget.amount - 1e-9


def queued(study: optuna.Study) -> bool:
    """Whether a trial waits to run: an interrupted one queued again (or a starting point not yet taken)."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def seconds_per_epoch(study: optuna.Study, fallback: float) -> float:
    """Measured so far over every trial's training, else `fallback`."""
    trials = study.get_trials(deepcopy=False)
    epochs = sum(t.user_attrs.get(EPOCHS, 0) for t in trials)
    return sum(t.user_attrs.get(SECONDS, 0.0) for t in trials) / epochs if epochs else fallback


def measured_seconds_per_epoch(url: str) -> float | None:
    """Seconds per epoch that the search in `url` has measured, or None (no such database or search yet, or nothing
    measured). Creates no SQLite file."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(url))
    except KeyError:  # the database has no search
        return None
    seconds = seconds_per_epoch(study, math.nan)
    return None if math.isnan(seconds) else seconds


def wait_for_other_workers(study: optuna.Study) -> None:
    """Return once no trial is running (a dead worker's trial is failed by its stale heartbeat)."""
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        time.sleep(POLL_S)
