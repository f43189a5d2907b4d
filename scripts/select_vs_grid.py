"""medft-select against Study v2 (issue 15): on one dataset of the cpu-v2 grid, search with a third of the epochs the
grid trained there (EfficientNet-Lite0), then set the strategy it picks beside the grid's best.

    python scripts/select_vs_grid.py run breastmnist-local    # the search (resumable: rerun to go on)
    python scripts/select_vs_grid.py table                    # docs/results/select-vs-grid/comparison.md

The grid's compute is counted in epochs of its runs on that dataset and backbone, successive-halving rungs included
(read from docs/results/cpu-v2/runs), so the budget does not depend on the machine; the seconds of both are
reported beside it. The search gets the grid's training settings (size, epochs, images, batch) and searches
everything the grid swept or chose (strategy, learning rate, SP's α, LP-FT's fine-tuning rate), and augmentation.
The search's folder (runs/select-vs-grid/<dataset>, with its model) stays out of the repo; its ranking and the final
runs' results.json are copied to docs/results/select-vs-grid/<dataset>.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import pandas as pd
from cpu_v2_lite0 import (
    BACKBONE,
    GRID_RUNS,
    ROOT,
    finished_cells,
    grid_runs,
    grid_summary,
    mean_std,
    validation_choices,
)

from medft_hf.results import RESULTS_FILE, RunResult
from medft_hf.select import main as select_main
from medft_hf.selection.ranking import RANKING_JSON, RANKING_MD, Ranking
from medft_hf.study import Cell, Grid

DOCS = ROOT / "docs/results/select-vs-grid"
FRACTION = 3  # the search may spend a third of the grid's compute
# The grid's fixed settings the search shares; the rest it searches (or they are the grid's way of running a cell).
SHARED = ("model", "dataset", "image_size", "max_train_samples", "num_train_epochs", "per_device_train_batch_size",
          "use_cpu")  # fmt: skip


def finished_runs(dataset: str) -> list[RunResult]:
    """Every finished run of the grid on `dataset` with the backbone, rungs included."""
    folders = [p.parent for p in GRID_RUNS.rglob(RESULTS_FILE)]
    return [RunResult.load(f) for f in folders if dataset in f.parts and BACKBONE in f.parts]


def run(dataset: str, output_dir: Path) -> None:
    grid = Grid.from_yaml("cpu-v2")
    finished_cells(grid, f"dataset={dataset}", range(grid.stages))
    finished = finished_runs(dataset)
    budget = math.floor(sum(r.num_train_epochs for r in finished) / FRACTION)
    flags = grid.flags(Cell(dataset, BACKBONE, "ft", 0), output_dir)
    argv = [f"--{key}={value}" for key, value in flags.items() if key in SHARED]
    select_main([*argv, "--strategies", *grid.strategies, "--budget", f"{budget}ep", "--output_dir", str(output_dir)])
    target = DOCS / dataset
    target.mkdir(parents=True, exist_ok=True)
    for name in (RANKING_JSON, RANKING_MD):
        shutil.copy(output_dir / name, target / name)
    for result in (output_dir / "final").rglob(RESULTS_FILE):
        destination = target / result.relative_to(output_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(result, destination)


def table() -> str:
    runs = grid_runs()
    grid, grid_choices = grid_summary(runs), validation_choices(runs)
    lines = [
        "| dataset | grid: epochs (hours) | medft-select: budget (search, final; hours of search runs) | "
        "grid's best strategy | medft-select picked | its final runs (test) | the grid's row for it | "
        "within the best's spread: its final runs | within: the grid's row for it | "
        "the grid's own choice on validation (test) | within: the grid's choice |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for folder in sorted(p for p in DOCS.iterdir() if (p / RANKING_JSON).is_file()):
        dataset = folder.name
        ranking = Ranking.load(folder)
        finished = finished_runs(dataset)
        grid_hours = sum(r.train_runtime_s for r in finished) / 3600
        search_hours = sum(t.seconds for t in ranking.trials) / 3600
        cases = grid.loc[dataset]
        best = cases["test_balanced_accuracy_mean"].idxmax()
        best_mean, best_std = cases.loc[best, ["test_balanced_accuracy_mean", "test_balanced_accuracy_std"]]
        picked = ranking.choice.trial.configuration["strategy"]
        tests = pd.Series([row["test"]["balanced_accuracy"] for row in ranking.final if row["test"]])
        spread = f"{tests.mean():.3f}" + (f" ± {tests.std():.3f}" if len(tests) > 1 else "") + f" (n={len(tests)})"
        own = mean_std(cases.loc[picked]) if picked in cases.index else "–"
        floor = best_mean - best_std
        within = "yes" if tests.mean() >= floor else "no"
        row_within = "–"
        if picked in cases.index:
            row_within = "yes" if cases.loc[picked, "test_balanced_accuracy_mean"] >= floor else "no"
        grid_choice = grid_choices[dataset]
        grid_within = "yes" if cases.loc[grid_choice, "test_balanced_accuracy_mean"] >= floor else "no"
        lines.append(
            f"| {dataset} | {sum(r.num_train_epochs for r in finished)} ({grid_hours:.2f}) | "
            f"{ranking.budget['budget']} (search {ranking.budget['search_used']}, final "
            f"{ranking.budget['final_used']}; {search_hours:.2f}) | {best} {mean_std(cases.loc[best])} | "
            f"{picked} | {spread} | {own} | {within} | {row_within} | "
            f"{grid_choice} {mean_std(cases.loc[grid_choice])} | {grid_within} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("run", help="search one dataset of the grid")
    search.add_argument("dataset")
    search.add_argument("--output_dir", type=Path, help="default: runs/select-vs-grid/<dataset>")
    commands.add_parser("table", help="write docs/results/select-vs-grid/comparison.md")
    args = parser.parse_args()
    if args.command == "run":
        run(args.dataset, args.output_dir or ROOT / "runs/select-vs-grid" / args.dataset)
    else:
        (DOCS / "comparison.md").write_text(table())
        print((DOCS / "comparison.md").read_text())


if __name__ == "__main__":
    main()
