"""The study: a grid of strategy × backbone × dataset × seed (× a learning-rate sweep) run cell by cell.

A grid is a YAML file (`hub_configs/benchmarks/*.yaml`) naming entries of the catalogs in
`hub_configs/backbones/` and `hub_configs/datasets/`. Every cell is one `train.py` run (the same code, in-process)
into its own folder; a cell with `results.json` is finished and skipped on a rerun, a cell with a complete
checkpoint is resumed from it, and a cell that fails leaves `failed.json` with its error and the grid goes on.

A grid with a `search` section chooses each strategy's setting before spending seeds on it: successive halving of the
sweep points on the search seeds (short, complete schedules in `rungs/`, the best 1/η kept at each rung, then the
full schedule), then the other seeds at the setting with the best validation score. Each stage is a list of
ordinary cells, so resuming, sharding, locks and Ray work the same; a stage starts for a strategy once its previous
stage has finished.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import datasets
import transformers
import yaml
from tqdm.auto import tqdm

from . import defaults
from .checkpoints import latest_complete_checkpoint
from .cost import CostModel, Estimate, estimate
from .errors import MedftError, exit_on_error
from .modeling import architecture_layout
from .results import RESULTS_FILE, RUNGS_FOLDER, RunResult, is_finished_run, ranked_settings, write_json_atomic
from .strategies import STRATEGIES, build_strategy, check_run_length

FAILED_FILE = "failed.json"
LOCK_FILE = ".running"
UNWRITTEN_LOCK_S = 60  # a lock file still empty this long after its creation was left by a dead worker
logger = logging.getLogger(__name__)


def hub_configs(kind: str) -> Traversable:
    """The package's `hub_configs/<kind>/` folder: backbones, datasets or benchmarks (the shipped grids)."""
    return resources.files("medft_hf.hub_configs") / kind


def shipped_grids() -> list[str]:
    """The grids in `hub_configs/benchmarks/`, by the name `medft-benchmark` takes."""
    return sorted(p.name.removesuffix(".yaml") for p in hub_configs("benchmarks").iterdir() if p.name.endswith(".yaml"))


def catalog(kind: str) -> dict[str, dict[str, Any]]:
    """All entries of `hub_configs/<kind>/` (backbones, datasets), by name."""
    folder = hub_configs(kind)
    entries = [yaml.safe_load(path.read_text()) for path in folder.iterdir() if path.name.endswith(".yaml")]
    return {entry["name"]: entry for entry in entries}


def point_name(sweep: tuple[tuple[str, Any], ...]) -> str:
    """A sweep point as its folder (and the report's setting) names it: `learning_rate=0.001-sp_alpha=0.1`."""
    return "-".join(f"{key}={value}" for key, value in sweep) or "default"


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    dataset: str
    backbone: str
    strategy: str
    seed: int
    sweep: tuple[tuple[str, Any], ...] = ()
    epochs: int | None = None  # a successive-halving rung: a complete schedule of this many epochs

    @property
    def path(self) -> Path:
        path = Path(self.dataset) / self.backbone / self.strategy / point_name(self.sweep) / f"seed{self.seed}"
        return Path(RUNGS_FOLDER) / f"e{self.epochs}" / path if self.epochs else path

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "backbone": self.backbone, "strategy": self.strategy, "seed": self.seed,
                **dict(self.sweep)}  # fmt: skip


@dataclass(frozen=True)
class Search:
    """How a grid chooses each strategy's setting (its sweep point) for a fraction of a full sweep's cost.

    On `seeds`, every point trains a complete schedule of `rungs[0]` epochs and the best 1/`reduction_factor`
    (rounded up) go on to the next rung, and so on; the survivors of the last rung train the grid's full schedule,
    and the best of those (mean validation score over `seeds`) is the setting the grid's other seeds train. Rungs
    are complete short schedules, as in medft-select: LP-FT's LP share, gradual unfreezing's pace and the decay are
    all compressed to the rung, so a setting is ranked after its strategy has done everything it does by design.
    """

    seeds: tuple[int, ...] = (0,)
    rungs: tuple[int, ...] = ()
    reduction_factor: int = 3

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Search:
        unknown = set(spec) - {"seeds", "rungs", "reduction_factor"}
        if unknown:
            raise MedftError(f"search: unknown keys {sorted(unknown)} (seeds, rungs, reduction_factor).")
        search = cls(
            tuple(spec.get("seeds", cls.seeds)), tuple(sorted(spec.get("rungs", ()))),
            int(spec.get("reduction_factor", cls.reduction_factor)),
        )  # fmt: skip
        whole_epochs = all(int(e) == e and e >= 1 for e in search.rungs)
        distinct = len(set(search.seeds)) == len(search.seeds) and len(set(search.rungs)) == len(search.rungs)
        if not search.seeds or search.reduction_factor < 2 or not whole_epochs or not distinct:
            raise MedftError(
                "search: needs at least one seed, reduction_factor >= 2 and rungs of whole epochs >= 1, seeds and "
                f"rungs each listed once (got {spec})."
            )
        return search

    @property
    def stages(self) -> int:
        """The rungs, the full schedule on the search seeds, the other seeds."""
        return len(self.rungs) + 2


@dataclass
class Grid:
    """A study: what to cross, the train.py flags shared by every cell, and per-strategy changes.

    `sweep` maps train.py flags to lists of values; every combination becomes its own cells, and the report keeps,
    for each dataset × backbone × strategy, the combination with the best mean validation score.
    `overrides[strategy]` adds flags (and may replace `sweep`) for one strategy. `search` (see `Search`) makes the
    sweep a successive-halving search on some seeds before the others run. A backbone or dataset is the name
    of a catalog entry or an entry written inline (`{name: ..., model: ...}` / `{name: ..., path: ...}`); a dataset
    entry's `train_flags` (e.g. `max_train_samples`) apply to its cells. `throughput` states the images/s of each
    backbone on the grid's hardware, for `--dry-run`'s cost estimate (see `medft_hf.cost`).
    """

    name: str
    strategies: list[str]
    backbones: list[str | dict[str, Any]]
    datasets: list[str | dict[str, Any]]
    seeds: list[int]
    training: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    hardware: str = ""
    throughput: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)

    def heading(self) -> str:
        """What the grid is and the hardware its settings were sized for (the cost estimate's images/s are that
        hardware's)."""
        return f"{self.name}: {self.description or '(no description)'}; for: {self.hardware or '(hardware not stated)'}"

    @classmethod
    def from_yaml(cls, path: str | Path) -> Grid:
        path = Path(path)
        if not path.is_file():
            named = hub_configs("benchmarks") / f"{path.name.removesuffix('.yaml')}.yaml"
            if not named.is_file():
                raise MedftError(
                    f"grid {path}: no such file, nor a shipped grid of that name ({', '.join(shipped_grids())})."
                )
            path = named
        spec = yaml.load(path.read_text(), Loader=_GridLoader) or {}
        spec.setdefault("strategies", list(STRATEGIES))
        unknown_keys = set(spec) - {f for f in cls.__dataclass_fields__}
        if unknown_keys:
            raise MedftError(f"grid {path}: unknown keys {sorted(unknown_keys)}.")
        try:
            grid = cls(**spec)
        except TypeError as error:
            raise MedftError(f"grid {path}: {error}") from error
        grid.validate()
        return grid

    def validate(self) -> None:
        """Every name must exist: all the bad entries are reported at once, before any training."""
        backbones, datasets = catalog("backbones"), catalog("datasets")
        problems = [f"unknown strategy {s!r}" for s in self.strategies if s not in STRATEGIES]
        problems += [f"unknown backbone {b!r}" for b in self.backbones if isinstance(b, str) and b not in backbones]
        problems += [f"unknown dataset {d!r}" for d in self.datasets if isinstance(d, str) and d not in datasets]
        problems += [f"backbone {b} needs a name and a model" for b in self.backbones if _lacks(b, "model")]
        problems += [f"dataset {d} needs a name and a path" for d in self.datasets if _lacks(d, "path")]
        problems += [
            f"override for strategy {s!r}, not in the grid" for s in self.overrides if s not in self.strategies
        ]
        if not self.seeds:
            problems.append("no seeds")
        if self.search:
            try:
                problems += self._search_problems()
            except MedftError as error:
                problems.append(str(error))
        if self.throughput:
            try:
                CostModel.from_spec(self.throughput, self.names("backbones"))
            except MedftError as error:
                problems.append(str(error))
        if not problems:
            problems += self.coinciding_schedules()
        if problems:
            raise MedftError(
                f"grid {self.name}: " + "; ".join(problems) + f". Known strategies: {', '.join(STRATEGIES)}; "
                f"backbones: {', '.join(sorted(backbones))}; datasets: {', '.join(sorted(datasets))}."
            )

    def coinciding_schedules(self) -> list[str]:
        """Strategies of the grid that would train identically (e.g. gu_lf and gu_fl at 2 epochs): comparing them
        would measure nothing but seed noise. Checked on each backbone's architecture, at the epoch count and each
        strategy's fixed flags, once per distinct schedule (a dataset's own flags may change it; swept flags are not
        expanded). A strategy that cannot run that long (LP-FT: at least 2 epochs, a whole number), or as long as a
        search rung, is a problem too: its runs would all fail."""
        rungs = self.searching.rungs if self.search else ()
        problems = []
        layouts = {
            name: architecture_layout(self.entry("backbones", name)["model"]) for name in self.names("backbones")
        }
        for (name, layout), dataset in itertools.product(layouts.items(), self._datasets_with_own_flags()):
            on = name if dataset is None else f"{name} with {dataset}"
            built = {}
            for strategy in self.strategies:
                flags = self.fixed_flags(dataset, strategy)
                epoch_count = float(flags.get("num_train_epochs", defaults.NUM_TRAIN_EPOCHS))
                epochs = math.ceil(epoch_count)
                config = STRATEGIES[strategy].config_class.from_flags(flags)
                for length in (epochs, *rungs):
                    try:
                        built_strategy = build_strategy(strategy, config, layout, length)
                        if length == epochs:
                            check_run_length(built_strategy, epoch_count, flags.get("max_steps", -1))
                    except MedftError as error:
                        at_rung = f" at the search's {length}-epoch rung" if length != epochs else ""
                        problems.append(f"{strategy} on {on}{at_rung}: {error}")
                        break
                    if length == epochs:
                        built[strategy] = built_strategy
            by_schedule: dict[Any, list[str]] = {}
            for strategy, built_strategy in built.items():
                signature = built_strategy.schedule_signature()
                if signature is not None:
                    by_schedule.setdefault((len(signature), signature), []).append(strategy)
            problems += [
                f"on {on} at {epochs} epochs, {' and '.join(same)} train identically (the same blocks frozen in "
                "every epoch); raise num_train_epochs or drop all but one"
                for (epochs, _), same in by_schedule.items()
                if len(same) > 1
            ]
        return problems

    def _search_problems(self) -> list[str]:
        search = self.searching
        problems = [f"search seed {s} is not among the grid's seeds" for s in search.seeds if s not in self.seeds]
        for strategy, dataset in itertools.product(self.strategies, self._datasets_with_own_flags()):
            epochs = self.fixed_flags(dataset, strategy).get("num_train_epochs", defaults.NUM_TRAIN_EPOCHS)
            if search.rungs and max(search.rungs) >= epochs:
                on = "" if dataset is None else f" on {dataset}"
                problems.append(
                    f"search rungs {list(search.rungs)} must be shorter than {strategy}'s {epochs} epochs{on}"
                )
        return problems

    @functools.cached_property
    def searching(self) -> Search | None:
        return Search.from_spec(self.search) if self.search else None

    @property
    def stages(self) -> int:
        return self.searching.stages if self.search else 1

    def stage_cells(self, stage: int, root: Path, filters: dict[str, set[str]] | None = None) -> tuple[list[Cell], int]:
        """The cells of one stage that the filters admit, and how many strategies cannot enter it yet (their
        previous stage has unfinished cells). Without `search` there is one stage: every cell."""
        filters = filters or {}
        search = self.searching
        if search is None:
            return self.cells(filters), 0
        cells, waiting = [], 0
        for group, points in self._sweep_points(filters).items():
            chosen = self._survivors(group, points, stage, root)
            if chosen is None:
                waiting += 1
                continue
            if stage < len(search.rungs):  # a rung: only where there is something left to rank
                seeds, epochs = (search.seeds, search.rungs[stage]) if len(chosen) > 1 else ((), None)
            elif stage == len(search.rungs):
                seeds, epochs = search.seeds, None
            else:
                seeds, epochs = [seed for seed in self.seeds if seed not in search.seeds], None
            cells += [Cell(*group, seed, point, epochs) for point in chosen for seed in seeds]
        return _admitted(cells, filters), waiting

    def planned_cells(self, filters: dict[str, set[str]] | None = None) -> list[list[Cell]]:
        """Every cell the grid runs, stage by stage; with a search, the first sweep points stand in for those it will
        keep: the right count and cost, before anything has run."""
        search = self.searching
        if search is None:
            return [self.cells(filters)]
        stages: list[list[Cell]] = [[] for _ in range(search.stages)]
        for group, points in self._sweep_points(filters).items():
            for stage, epochs in enumerate(search.rungs):
                if len(points) == 1:
                    break
                stages[stage] += [Cell(*group, seed, point, epochs) for point in points for seed in search.seeds]
                points = points[: math.ceil(len(points) / search.reduction_factor)]
            stages[-2] += [Cell(*group, seed, point) for point in points for seed in search.seeds]
            stages[-1] += [Cell(*group, seed, points[0]) for seed in self.seeds if seed not in search.seeds]
        return [_admitted(cells, filters or {}) for cells in stages]

    def _sweep_points(self, filters: dict[str, set[str]] | None) -> dict[tuple[str, str, str], list]:
        """Each dataset × backbone × strategy the filters admit, with all its sweep points (a search ranks them all,
        whatever the filters say). Refuses unknown filters, naming what exists."""
        admitted = {(c.dataset, c.backbone, c.strategy) for c in self.cells(filters)}
        groups: dict[tuple[str, str, str], list] = {}
        for cell in self.cells():
            group = (cell.dataset, cell.backbone, cell.strategy)
            if group in admitted and cell.sweep not in groups.setdefault(group, []):
                groups[group].append(cell.sweep)
        return groups

    def _survivors(self, group: tuple[str, str, str], points: list, stage: int, root: Path) -> list | None:
        """The sweep points of `group` that enter `stage`; None while an earlier stage is unfinished. Each earlier
        stage on the search seeds (the rungs, then the full schedule) keeps its best; the last stage has one. A
        point whose runs failed never goes on: if all failed, nothing does (the failures are in failed.json)."""
        search = self.searching
        for epochs in [*search.rungs, None][:stage]:
            if len(points) == 1:
                break  # nothing to rank, nothing to wait for
            scores = {}
            for point in points:
                folders = [root / Cell(*group, seed, point, epochs).path for seed in search.seeds]
                if not all(is_finished_run(f) or (f / FAILED_FILE).exists() for f in folders):
                    return None
                scores[point_name(point)] = _mean_validation(folders)
            keep = 1 if epochs is None else math.ceil(len(points) / search.reduction_factor)
            by_name = {point_name(point): point for point in points}
            points = [by_name[name] for name in ranked_settings(scores)[:keep] if not math.isnan(scores[name])]
        return points

    def entry(self, kind: str, name: str) -> dict[str, Any]:
        """The catalog or inline entry called `name` (kind: backbones or datasets)."""
        inline = {e["name"]: e for e in getattr(self, kind) if isinstance(e, dict)}
        return inline.get(name) or catalog(kind)[name]

    def names(self, kind: str) -> list[str]:
        """The backbone or dataset names of the grid (kind: backbones or datasets), catalog or inline."""
        return [entry if isinstance(entry, str) else entry["name"] for entry in getattr(self, kind)]

    def cells(self, filters: dict[str, set[str]] | None = None) -> list[Cell]:
        cells = []
        for dataset, backbone, strategy in itertools.product(
            self.names("datasets"), self.names("backbones"), self.strategies
        ):
            sweep = self.overrides.get(strategy, {}).get("sweep", self.sweep)
            points = [tuple(zip(sweep, values, strict=True)) for values in itertools.product(*sweep.values())]
            for point, seed in itertools.product(points, self.seeds):
                cells.append(Cell(dataset, backbone, strategy, seed, point))
        return _filtered(cells, filters or {})

    def fixed_flags(self, dataset: str | None, strategy: str) -> dict[str, Any]:
        """The train.py flags every cell of `strategy` on `dataset` (None: a dataset without `train_flags`) shares,
        before its sweep point: the grid's, the dataset entry's, the strategy's overrides. The grid's checks and its
        cells read the same merge."""
        own = self.entry("datasets", dataset).get("train_flags", {}) if dataset is not None else {}
        overrides = {k: v for k, v in self.overrides.get(strategy, {}).items() if k != "sweep"}
        return {key: value for key, value in {**self.training, **own, **overrides}.items() if value is not None}

    def _datasets_with_own_flags(self) -> list[str | None]:
        """None for the datasets whose `train_flags` leave every strategy's schedule as the grid's, and each dataset
        whose flags change one (its epoch count or a strategy flag): the checks run once per distinct schedule."""
        shaping = {"num_train_epochs"} | {f.name for cls in STRATEGIES.values() for f in fields(cls.config_class)}
        own = [
            name
            for name in self.names("datasets")
            if shaping & set(self.entry("datasets", name).get("train_flags", {}))
        ]
        return [None, *own] if len(own) < len(self.names("datasets")) else own

    def flags(self, cell: Cell, output_dir: Path) -> dict[str, Any]:
        """The train.py arguments of one cell, typed as the grid file gives them."""
        dataset = self.entry("datasets", cell.dataset)
        flags: dict[str, Any] = {
            "strategy": cell.strategy,
            "model": self.entry("backbones", cell.backbone)["model"],
            "dataset": dataset["path"],
            **{key: dataset[key] for key in ("dataset_config", "image_column", "label_column") if key in dataset},
            **self.fixed_flags(cell.dataset, cell.strategy),
            **dict(cell.sweep),
            # a rung only ranks settings on validation: its test split stays unseen (and unpaid for)
            **({"num_train_epochs": cell.epochs, "skip_test": True} if cell.epochs else {}),
            "seed": cell.seed,
            "output_dir": str(output_dir),
        }
        return {key: value for key, value in flags.items() if value is not None}

    def cost(self, cells: list[Cell]) -> Estimate:
        """GPU-hours and disk of `cells`, from the grid's `throughput` and each dataset entry's `num_rows`."""
        if not self.throughput:
            raise MedftError(f"grid {self.name} states no `throughput` (images/s per backbone): no cost estimate.")
        unsized = sorted({cell.dataset for cell in cells if "num_rows" not in self.entry("datasets", cell.dataset)})
        if unsized:
            raise MedftError(
                f"no cost estimate: dataset(s) {', '.join(unsized)} give no `num_rows` ({{train: n, validation: n, "
                "test: n}}) in their entry."
            )
        model = CostModel.from_spec(self.throughput, self.names("backbones"))
        return estimate(
            (
                (cell.backbone, self.entry("backbones", cell.backbone)["model"], self.flags(cell, Path()),
                 self.entry("datasets", cell.dataset)["num_rows"])
                for cell in cells
            ),
            model,
        )  # fmt: skip

    def argv(self, cell: Cell, output_dir: Path) -> list[str]:
        """The same arguments as a train.py command line, for people (--dry-run) and other schedulers."""
        return [
            item
            for key, value in self.flags(cell, output_dir).items()
            for item in (f"--{key}", str(value).lower() if isinstance(value, bool) else str(value))
        ]


class _GridLoader(yaml.SafeLoader):
    """YAML as people write numbers: `1e-3` is a float (PyYAML's YAML 1.1 wants `1.0e-3`), since grid values go to
    train.py typed, not as text."""


_GridLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def _lacks(entry: str | dict[str, Any], key: str) -> bool:
    return isinstance(entry, dict) and not ("name" in entry and key in entry)


def _same(value: Any, text: str) -> bool:
    """A cell's value equals a filter's text: numerically when both are numbers (1e-3 is 0.001), else as text."""
    try:
        return float(text) == float(value)
    except (TypeError, ValueError):
        return str(value).lower() == text.lower()


def _filtered(cells: list[Cell], filters: dict[str, set[str]]) -> list[Cell]:
    """The cells every filter admits; an unknown key or a value no cell has is refused, naming what exists."""
    known: dict[str, set[Any]] = {}
    for cell in cells:
        for key, value in cell.as_dict().items():
            known.setdefault(key, set()).add(value)
    problems = []
    for key, wanted in filters.items():
        if key not in known:
            problems.append(f"unknown key {key!r} (keys: {', '.join(sorted(known))})")
            continue
        unmatched = sorted(text for text in wanted if not any(_same(value, text) for value in known[key]))
        if unmatched:
            values = ", ".join(sorted(map(str, known[key] - {None})))
            problems.append(f"{key}={'|'.join(unmatched)} matches no cell ({key} values: {values})")
    if problems:
        raise MedftError("--filter: " + "; ".join(problems) + ".")
    return _admitted(cells, filters)


def _admitted(cells: list[Cell], filters: dict[str, set[str]]) -> list[Cell]:
    return [
        cell
        for cell in cells
        if all(any(_same(cell.as_dict().get(key), text) for text in wanted) for key, wanted in filters.items())
    ]


def _mean_validation(folders: list[Path], metric: str = "balanced_accuracy") -> float:
    """The mean validation score of finished runs (NaN if one failed): what a search stage ranks by, as the report
    does (its default metric, train.py's metric for the best epoch)."""
    scores = [RunResult.load(f / RESULTS_FILE).validation[metric] if is_finished_run(f) else math.nan for f in folders]
    return sum(scores) / len(scores)


def parse_shard(text: str | None) -> tuple[int, int]:
    """`--shard i/n` (i from 0 to n-1, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT) -> (i, n)."""
    if text is None:
        return 0, 1
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise MedftError(f"--shard {text}: expected i/n with 0 <= i < n, e.g. --shard 0/4.")
    return int(index), int(count)


def parse_filters(text: str | None) -> dict[str, set[str]]:
    """`strategy=lpft|ft,dataset=breastmnist-local` -> {"strategy": {"lpft", "ft"}, "dataset": {...}}."""
    filters: dict[str, set[str]] = {}
    for part in filter(None, (text or "").split(",")):
        key, sep, values = part.partition("=")
        if not sep:
            raise MedftError(f"--filter {text}: expected key=value[|value...] pairs separated by commas.")
        filters[key.strip()] = set(values.split("|"))
    return filters


@contextmanager
def cell_lock(output_dir: Path) -> Iterator[bool]:
    """Hold `output_dir/.running` while this worker runs the cell; yields False when another live worker holds it,
    so two workers on one output folder never run the same cell. A lock left by a dead process on this host is
    taken over. Only single-process workers lock: the ranks of one `accelerate launch` job share their cells."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield True
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK_FILE
    owner = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            with os.fdopen(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY), "w") as handle:
                json.dump(owner, handle)
            break
        except FileExistsError:
            if _holder_alive(lock):
                yield False
                return
            lock.unlink(missing_ok=True)  # its process died: the cell resumes here from its checkpoint
    else:
        yield False
        return
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def _holder_alive(lock: Path) -> bool:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        # being written right now, or never will be: its worker died between creating and writing it
        try:
            return time.time() - lock.stat().st_mtime < UNWRITTEN_LOCK_S
        except FileNotFoundError:
            return False
    if holder.get("host") != socket.gethostname():
        return True  # another machine's worker: trust it
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cell_status(root: Path, cell: Cell) -> str:
    """done, failed, running or pending, from what the cell's folder holds."""
    folder = root / cell.path
    if is_finished_run(folder):
        return "done"
    if (folder / LOCK_FILE).exists():
        return "running"
    return "failed" if (folder / FAILED_FILE).exists() else "pending"


def run_cell(grid: Grid, cell: Cell, root: Path) -> str:
    """Run (or resume) one cell and remove its checkpoints once it is done; returns "done", "skipped", "running
    elsewhere" or "failed". KeyboardInterrupt propagates. Every worker (a loop, a shard, a Ray task) runs cells
    through here."""
    output_dir = root / cell.path
    if is_finished_run(output_dir):
        return "skipped"
    with cell_lock(output_dir) as held:
        if not held:
            return "running elsewhere"
        if is_finished_run(output_dir):  # finished by another worker between the check and the lock
            return "skipped"
        return _run_locked(grid, cell, output_dir)


def train_resumably(flags: dict[str, Any], output_dir: Path) -> RunResult:
    """The train.py run of `flags` in `output_dir`, resumed from its last complete checkpoint if it has one, its
    checkpoints removed once it finished. The caller holds `cell_lock(output_dir)`; grid cells and search trials both
    run through here."""
    from .train import parse_dict, run  # train imports the trainer stack; keep `--dry-run` light

    checkpoint = latest_complete_checkpoint(output_dir) if output_dir.exists() else None
    if checkpoint is not None:
        logger.info("Resuming %s from %s", output_dir, checkpoint.name)
        flags = {**flags, "resume_from_checkpoint": str(checkpoint)}
    # one log line per epoch, no progress bars: the grid's and the search's own bars show how far they are
    result = run(*parse_dict({"disable_tqdm": True, **flags, "output_dir": str(output_dir)}))
    clean_checkpoints(output_dir)
    return result


def _run_locked(grid: Grid, cell: Cell, output_dir: Path) -> str:
    (output_dir / FAILED_FILE).unlink(missing_ok=True)
    flags = grid.flags(cell, output_dir)
    try:
        train_resumably(flags, output_dir)
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as error:  # a failing cell (argparse exits too) is recorded; the grid goes on
        checkpoint = latest_complete_checkpoint(output_dir)
        write_json_atomic(
            output_dir / FAILED_FILE,
            {**cell.as_dict(), "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(),
             "flags": flags,
             # what a rerun of the grid continues this cell from (None: it trains the cell from the start)
             "resumes_from": checkpoint.name if checkpoint else None},
        )  # fmt: skip
        return "failed"
    return "done"


def clean_checkpoints(output_dir: Path) -> None:
    """A finished cell keeps its results (and its model, unless `save_model: false`); its checkpoints only served
    a resume and the choice of the best epoch."""
    if (output_dir / RESULTS_FILE).is_file():
        for checkpoint in output_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)


def configure_logging() -> None:
    """What a cell prints: our INFO lines (one per epoch, resumes), transformers' errors only, no progress bars of
    loading and saving."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)


def run_cell_in_worker(grid: Grid, root: Path, cell: Cell) -> str:
    """`run_cell` in a fresh worker process (a Ray task), which has no logging set up of its own."""
    configure_logging()
    return run_cell(grid, cell, root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="medft-benchmark",
        description="Run a study grid, one train.py run per cell. Rerunning skips finished cells and resumes "
        "interrupted ones from their last checkpoint.",
    )
    parser.add_argument("grid", help=f"a grid YAML file, or a shipped grid's name ({', '.join(shipped_grids())})")
    parser.add_argument("--output_dir", help="where the cells go (default: runs/<grid name>)")
    parser.add_argument("--filter", help="run a subset, e.g. strategy=lpft|ft,dataset=breastmnist-local,seed=0")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the cells, their commands and the grid's cost; run nothing"
    )
    parser.add_argument(
        "--shard", help="run every n-th cell from the i-th, i/n with 0 <= i < n (e.g. a SLURM array task)"
    )
    parser.add_argument("--status", action="store_true", help="print each cell's state (done/failed/running/pending)")
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the cells as Ray tasks: alone, on a local Ray instance (or the cluster RAY_ADDRESS names); with an "
        "address (auto, ray://host:10001), on that cluster. Needs the cluster extra",
    )
    parser.add_argument("--cpus_per_cell", type=float, default=1, help="with --ray: CPUs each cell reserves")
    parser.add_argument(
        "--gpus_per_cell", type=float, help="with --ray: GPUs each cell reserves (default: 0 if the grid sets "
        "use_cpu, else 1)"
    )  # fmt: skip
    args = parser.parse_args(argv)
    with exit_on_error():  # a bad grid, filter or results.json: one message, not a traceback
        grid = Grid.from_yaml(args.grid)
        index, count = parse_shard(args.shard)
        filters = parse_filters(args.filter)
        grid.cells(filters)  # refuses unknown filters before anything runs
        root = Path(args.output_dir or f"runs/{grid.name}")
        if args.status or args.dry_run:
            print(grid.heading())

        def stage_cells(stage: int) -> tuple[list[Cell], int]:
            cells, waiting = grid.stage_cells(stage, root, filters)
            return cells[index::count], waiting

        if args.status:
            states = Counter()
            for stage in range(grid.stages):
                cells, waiting = stage_cells(stage)
                for cell in cells:
                    state = cell_status(root, cell)
                    states[state] += 1
                    print(f"{state:<8} {cell.path}")
                states["waiting"] += waiting
            counted = ("done", "failed", "running", "pending")
            waiting_line = f"; {states['waiting']} strategy stages wait for an earlier one" if grid.search else ""
            print(", ".join(f"{states[s]} {s}" for s in counted) + f" of {sum(states[s] for s in counted)} cells"
                  + waiting_line)  # fmt: skip
            return
        if args.dry_run:
            cells = [cell for stage in grid.planned_cells(filters) for cell in stage[index::count]]  # as a run shards
            for cell in cells:
                print(f"{cell.path}\n    train.py {' '.join(grid.argv(cell, root / cell.path))}")
            print(f"{len(cells)} cells" + (" (the search decides which points continue)" if grid.search else ""))
            try:
                print("\n".join(grid.cost(cells).lines()))
            except MedftError as error:  # a grid without throughput figures still lists its cells
                print(error)
            return

        configure_logging()
        is_main = os.environ.get("RANK", "0") == "0"
        outcomes: Counter[str] = Counter()
        if args.ray is not None:
            from .cluster import run_on_ray  # Ray is an optional extra

            gpus = args.gpus_per_cell if args.gpus_per_cell is not None else 0 if grid.training.get("use_cpu") else 1
            task = functools.partial(run_cell_in_worker, grid, root)

            def run_stage(cells: list[Cell]) -> Iterator[tuple[Cell, str]]:
                return run_on_ray(cells, task, args.ray or None, args.cpus_per_cell, gpus)
        else:

            def run_stage(cells: list[Cell]) -> Iterator[tuple[Cell, str]]:
                return ((cell, run_cell(grid, cell, root)) for cell in cells)

        total = waiting = 0
        for stage in range(grid.stages):
            cells, waiting = stage_cells(stage)
            total += len(cells)
            finished = run_stage(cells)
            description = grid.name + (f" stage {stage + 1}/{grid.stages}" if grid.search else "")
            for cell, outcome in tqdm(finished, desc=description, total=len(cells), unit="cell", disable=not is_main):
                outcomes[outcome] += 1
                if outcome == "failed" and is_main:
                    tqdm.write(f"failed: {cell.path} (see {root / cell.path / FAILED_FILE})")
        if is_main:
            pending = f"; {waiting} strategies wait for cells running elsewhere (rerun to go on)" if waiting else ""
            print(f"{grid.name}: {dict(outcomes)} of {total} cells{pending}; results in {root}")
        sys.exit(1 if outcomes["failed"] else 0)


if __name__ == "__main__":
    main()
