"""Seeded, self-contained randomness: what runs inside `isolated_rng` depends on its seed only, and leaves the
caller's random streams (Python, NumPy, torch) exactly as they were. This is what makes augmentation and Auto-RGN's
measurement batches identical on every rank, with any number of workers, and after a resume."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch


def derived_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from several integers (e.g. run seed, epoch, row)."""
    return int(np.random.SeedSequence([abs(k) for k in keys]).generate_state(1)[0])


@contextmanager
def isolated_rng(seed: int, devices: Sequence[int] = ()) -> Iterator[None]:
    """Seed Python, NumPy and torch (CPU and the given CUDA `devices`) with `seed`; restore them afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


# What transformers' `enable_full_determinism` (--full_determinism) sets for the whole process.
DETERMINISM_ENVIRONMENT = (
    "CUDA_LAUNCH_BLOCKING",
    "CUBLAS_WORKSPACE_CONFIG",
    "ASCEND_LAUNCH_BLOCKING",
    "HCCL_DETERMINISTIC",
    "FLASH_ATTENTION_DETERMINISTIC",
)


@contextmanager
def determinism_restored() -> Iterator[None]:
    """Leave torch's deterministic mode, cuDNN's flags and the environment as they were: `--full_determinism` sets
    them process-wide, and the next run of a grid or a search in the same process must not inherit them. (CUDA reads
    the variables when it starts: in a process that already uses it, restoring them changes nothing there.)"""
    algorithms, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    environment = {name: os.environ.get(name) for name in DETERMINISM_ENVIRONMENT}
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
