"""More seeds at the settings the cpu-v2 grid chose (issue 10): the grid's verdicts compare strategies within their
seed spreads, and three seeds estimate a spread poorly (PneumoniaMNIST's FT: 0.003 over three, against 0.012-0.059 on
the other datasets). This trains further seeds of some strategies at the setting the grid's search chose on each
dataset (EfficientNet-Lite0), exactly as the grid runs a cell, and sets 3 and 3 + n seeds side by side.

    python scripts/more_seeds.py run --strategies ft lpft --seeds 3 4    # resumable: rerun to go on
    python scripts/more_seeds.py table --strategies ft lpft              # docs/results/more-seeds/comparison.md

The runs go to docs/results/more-seeds/runs (the grid's layout, results.json only), never into the grid's folder,
whose report stays the 3-seed study it describes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medft_hf.report import collect, select_on_validation, summary
from medft_hf.study import Cell, Grid, cell_status, configure_logging, parse_filters, run_cell

ROOT = Path(__file__).resolve().parent.parent
GRID_RUNS = ROOT / "docs/results/cpu-v2/runs"
DOCS = ROOT / "docs/results/more-seeds"
MORE_RUNS = DOCS / "runs"
BACKBONE = "efficientnet-lite0-local"
METRIC = "balanced_accuracy"
STRATEGIES = ("ft", "lpft")  # the first is the reference the others are compared with


def chosen_cells(grid: Grid, strategies: Sequence[str]) -> list[Cell]:
    """The grid's last-stage cells (its other seeds, at each strategy's chosen setting) on every dataset, once
    they are all done: a setting is final only when the search that chose it has finished."""
    filters = parse_filters(f"backbone={BACKBONE},strategy={'|'.join(strategies)}")
    cells, waiting = grid.stage_cells(grid.stages - 1, GRID_RUNS, filters)
    unfinished = [cell.path for cell in cells if cell_status(GRID_RUNS, cell) != "done"]
    if waiting or unfinished:
        raise SystemExit(
            f"The grid has not finished choosing these strategies' settings ({waiting} still searching, "
            f"{len(unfinished)} final cells unfinished): run it first (scripts/run_cpu_v2.sh)."
        )
    return cells


def run(strategies: Sequence[str], seeds: list[int]) -> None:
    configure_logging()
    grid = Grid.from_yaml("cpu-v2")
    settings = {(cell.dataset, cell.backbone, cell.strategy, cell.sweep) for cell in chosen_cells(grid, strategies)}
    taken = [seed for seed in seeds if seed in grid.seeds]
    if taken:
        raise SystemExit(f"Seeds {taken} are the grid's own; choose others (the grid has {grid.seeds}).")
    for dataset, backbone, strategy, sweep in sorted(settings):
        for seed in seeds:
            cell = Cell(dataset, backbone, strategy, seed, sweep)
            print(f"{cell.path}: {run_cell(grid, cell, MORE_RUNS)}", flush=True)


def table(strategies: Sequence[str] = STRATEGIES) -> str:
    grid_runs, _ = collect(GRID_RUNS)
    more_runs, _ = collect(MORE_RUNS)
    grid_runs = grid_runs[(grid_runs["backbone"] == BACKBONE) & grid_runs["strategy"].isin(strategies)]
    # The settings compare on the seeds they share (the search's seed), so the grid's choice stands with more seeds.
    three = summary(select_on_validation(grid_runs, METRIC), METRIC).set_index(["dataset", "strategy"])
    every = summary(select_on_validation(pd.concat([grid_runs, more_runs]), METRIC), METRIC)
    every = every.set_index(["dataset", "strategy"])
    reference, *others = strategies
    lines = [
        f"| dataset | strategy | setting | test {METRIC}: the grid's 3 seeds | with the new seeds (n) | "
        f"{reference} minus it: 3 seeds | with the new seeds | below {reference} beyond both spreads: 3 seeds | "
        "with the new seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in sorted(every.index.get_level_values("dataset").unique()):
        for strategy in strategies:
            row3, row = three.loc[(dataset, strategy)], every.loc[(dataset, strategy)]
            cells = [dataset, strategy, row.settings, _mean_std(row3), f"{_mean_std(row)} ({row.n})"]
            if strategy in others:
                ref3, ref = three.loc[(dataset, reference)], every.loc[(dataset, reference)]
                cells += [f"{_gap(ref3, row3):+.3f}", f"{_gap(ref, row):+.3f}", _beyond(ref3, row3), _beyond(ref, row)]
            else:
                cells += ["–"] * 4
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_std(row: pd.Series) -> str:
    return f"{row[f'test_{METRIC}_mean']:.3f} ± {row[f'test_{METRIC}_std']:.3f}"


def _gap(reference: pd.Series, row: pd.Series) -> float:
    return reference[f"test_{METRIC}_mean"] - row[f"test_{METRIC}_mean"]


def _beyond(reference: pd.Series, row: pd.Series) -> str:
    """Issue 10's "below beyond the seed spread": the gap exceeds each strategy's own standard deviation."""
    spreads = (reference[f"test_{METRIC}_std"], row[f"test_{METRIC}_std"])
    return "yes" if _gap(reference, row) > max(spreads) else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("run", help="train the new seeds at the grid's chosen settings")
    train.add_argument("--strategies", nargs="+", default=STRATEGIES)
    train.add_argument("--seeds", nargs="+", type=int, default=[3, 4])
    compare = commands.add_parser("table", help="write docs/results/more-seeds/comparison.md")
    compare.add_argument("--strategies", nargs="+", default=STRATEGIES, help="the first is the reference")
    args = parser.parse_args()
    if args.command == "run":
        run(args.strategies, args.seeds)
    else:
        (DOCS / "comparison.md").write_text(table(args.strategies))
        print((DOCS / "comparison.md").read_text())


if __name__ == "__main__":
    main()
