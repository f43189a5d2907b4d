"""What the scripts that build on the cpu-v2 grid's EfficientNet-Lite0 cases share (more_seeds.py,
select_vs_grid.py): where the grid's runs are, a check that the grid has finished there, and its summary."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medft_hf.report import collect, select_on_validation, summary
from medft_hf.study import Cell, Grid, cell_status, parse_filters

ROOT = Path(__file__).resolve().parent.parent
GRID_RUNS = ROOT / "docs/results/cpu-v2/runs"
BACKBONE = "efficientnet-lite0-local"
METRIC = "balanced_accuracy"


def finished_cells(grid: Grid, filters: str, stages: range) -> list[Cell]:
    """The cells of the last of `stages` matching `filters` (a --filter text; the backbone is added), once every cell
    of those stages has run: a setting is final only when the search that chose it has finished."""
    parsed = parse_filters(f"backbone={BACKBONE},{filters}")
    for stage in stages:
        cells, waiting = grid.stage_cells(stage, GRID_RUNS, parsed)
        unfinished = sum(cell_status(GRID_RUNS, cell) not in ("done", "failed") for cell in cells)
        if waiting or unfinished:
            raise SystemExit(
                f"{filters}: the grid's stage {stage + 1} has not finished there ({waiting} cells waiting for a "
                f"choice, {unfinished} unfinished): run the grid first (scripts/run_cpu_v2.sh)."
            )
    return cells


def grid_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per dataset × strategy of the backbone's runs, each at its setting chosen on
    validation, indexed by (dataset, strategy)."""
    runs = runs[runs["backbone"] == BACKBONE]
    return summary(select_on_validation(runs, METRIC), METRIC).set_index(["dataset", "strategy"])


def validation_means(runs: pd.DataFrame) -> pd.Series:
    """Mean validation score over seeds per dataset × strategy of the backbone's runs, each at its setting chosen on
    validation."""
    chosen = select_on_validation(runs[runs["backbone"] == BACKBONE], METRIC)
    return chosen.groupby(["dataset", "strategy"])[f"validation_{METRIC}"].mean()


def validation_choices(runs: pd.DataFrame) -> pd.Series:
    """Per dataset, the strategy the grid itself would pick on validation: the highest of `validation_means` (three
    times the seeds a search trains at the end, and every setting the grid swept). Ties go to the name that sorts
    first."""
    means = validation_means(runs).reset_index()
    ranked = means.sort_values(["dataset", f"validation_{METRIC}", "strategy"], ascending=[True, False, True])
    return ranked.groupby("dataset")["strategy"].first()


def gap(reference: pd.Series, row: pd.Series) -> float:
    """How far `row`'s mean test score lies below `reference`'s (rows of `grid_summary`)."""
    return reference[f"test_{METRIC}_mean"] - row[f"test_{METRIC}_mean"]


def below_beyond_spreads(reference: pd.Series, row: pd.Series) -> bool:
    """Issue 10's "below beyond the seed spread": the gap exceeds each strategy's own standard deviation."""
    return gap(reference, row) > max(reference[f"test_{METRIC}_std"], row[f"test_{METRIC}_std"])


def against(reference: pd.Series, row: pd.Series) -> str:
    """`row`'s test score, its gap below `reference` and whether that gap is beyond both spreads, as table cells."""
    beyond = "yes" if below_beyond_spreads(reference, row) else "no"
    return f"{mean_std(row)}, {gap(reference, row):+.3f}, {beyond}"


def grid_runs() -> pd.DataFrame:
    return collect(GRID_RUNS)[0]


def mean_std(row: pd.Series) -> str:
    return f"{row[f'test_{METRIC}_mean']:.3f} ± {row[f'test_{METRIC}_std']:.3f}"
