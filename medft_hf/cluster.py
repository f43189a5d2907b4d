"""Scale-out on Ray: run independent tasks (a study's cells) on the CPUs and GPUs of a local Ray instance or of a
Ray cluster spanning many machines. Optional: `pip install -e ".[cluster]"`.

It knows nothing about studies: the caller hands it the tasks and the function that runs one (for a study,
`run_cell`, which locks the cell, resumes it from its checkpoint and records a failure), so a cell run by Ray is
the same resumable run as one run by a loop or a `--shard`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from .errors import MedftError

Task = TypeVar("Task")
logger = logging.getLogger(__name__)


def run_on_ray(
    tasks: list[Task],
    function: Callable[[Task], str],
    address: str | None = None,
    cpus_per_task: float = 1,
    gpus_per_task: float = 0,
) -> Iterator[tuple[Task, str]]:
    """Submit `function(task)` for every task, each with its own share of the cluster's resources, and yield
    (task, outcome) as they finish. `address`: None starts a local Ray instance (or joins the one that
    `RAY_ADDRESS` names, or one already started in this process); "auto" or "ray://host:10001" joins a cluster.
    A task whose worker dies (killed, out of memory, a lost node) yields "failed" and the rest go on."""
    try:
        import ray
    except ImportError as error:
        raise MedftError('--ray needs Ray: pip install -e ".[cluster]" (or pip install "ray[default]").') from error
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as error:
            raise MedftError(f"--ray {address}: no Ray cluster there ({error}). Start one with `ray start`.") from error
    # No retries: a retried task could land beside a lock its dead predecessor left on another machine; a rerun of
    # the command resumes the cell from its last checkpoint instead.
    remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=0)(_call)
    return _as_completed(ray, {remote.remote(function, task): task for task in tasks})


def _call(function: Callable[[Task], str], task: Task) -> str:
    return function(task)


def _as_completed(ray, pending: dict) -> Iterator[tuple[Task, str]]:
    while pending:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        task = pending.pop(ready)
        try:
            outcome = ray.get(ready)
        except ray.exceptions.RayError as error:
            logger.error("%s: its Ray worker failed (%s); rerun the command to resume it.", task, error)
            outcome = "failed"
        yield task, outcome
