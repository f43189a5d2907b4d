"""Rerun finished cells of a study with the code as it is now, into another folder, and set their scores beside the
ones the study recorded: does the current code reproduce a study, and how far does a change of the code move it?

    python scripts/rerun_cells.py cpu-v2 docs/results/cpu-v2/runs --output_dir runs/rerun \
        --filter "strategy=auto_rgn,backbone=efficientnet-lite0-local,seed=0" --chosen

Each cell runs exactly as the grid runs it (resumable: rerun the command to go on); `--chosen` keeps only each
strategy's setting that the grid's search chose. Prints a Markdown table, one row per cell.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medft_hf.errors import exit_on_error
from medft_hf.results import RunResult, is_finished_run
from medft_hf.study import Cell, Grid, configure_logging, parse_filters, run_cell


def recorded_cells(grid: Grid, runs: Path, filters: dict[str, set[str]], chosen: bool) -> list[Cell]:
    """The grid's full-schedule cells that `filters` admit and `runs` holds finished (with `chosen`, only at the
    setting the search chose for their strategy)."""
    cells = [cell for cell in grid.cells(filters) if is_finished_run(runs / cell.path)]
    if chosen:
        last_stage, _ = grid.stage_cells(grid.stages - 1, runs, {k: v for k, v in filters.items() if k != "seed"})
        points = {(c.dataset, c.backbone, c.strategy, c.sweep) for c in last_stage}
        cells = [c for c in cells if (c.dataset, c.backbone, c.strategy, c.sweep) in points]
    return cells


def comparison(cells: list[Cell], runs: Path, output_dir: Path, metric: str) -> str:
    lines = [
        f"| cell | validation {metric}: recorded | now | test {metric}: recorded | now | test: now − recorded |",
        "|---|---|---|---|---|---|",
    ]
    differences = []
    for cell in cells:
        recorded, now = RunResult.load(runs / cell.path), RunResult.load(output_dir / cell.path)
        before, after = recorded.test[metric], now.test[metric]
        differences.append(after - before)
        lines.append(
            f"| `{cell.path}` | {recorded.validation[metric]:.3f} | {now.validation[metric]:.3f} | {before:.3f} | "
            f"{after:.3f} | {after - before:+.3f} |"
        )
    if differences:
        lines.append(f"| mean over {len(differences)} cells | | | | | {sum(differences) / len(differences):+.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="a grid name or file (hub_configs/benchmarks)")
    parser.add_argument("runs", type=Path, help="the study's runs folder")
    parser.add_argument("--output_dir", type=Path, required=True, help="where the cells run again")
    parser.add_argument("--filter", default="", help="as medft-benchmark's --filter")
    parser.add_argument("--chosen", action="store_true", help="only each strategy's setting the search chose")
    parser.add_argument("--metric", default="balanced_accuracy")
    args = parser.parse_args()
    configure_logging()
    with exit_on_error():
        grid = Grid.from_yaml(args.grid)
        cells = recorded_cells(grid, args.runs, parse_filters(args.filter), args.chosen)
        for cell in cells:
            print(f"{cell.path}: {run_cell(grid, cell, args.output_dir)}", flush=True)
        print(comparison(cells, args.runs, args.output_dir, args.metric))


if __name__ == "__main__":
    main()
