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

import pandas as pd
from cpu_v2_lite0 import METRIC, ROOT, below_beyond_spreads, finished_cells, gap, grid_runs, grid_summary, mean_std

from medft_hf.report import collect
from medft_hf.study import Cell, Grid, configure_logging, run_cell

DOCS = ROOT / "docs/results/more-seeds"
MORE_RUNS = DOCS / "runs"
STRATEGIES = ("ft", "lpft")  # the first is the reference the others are compared with


def run(strategies: Sequence[str], seeds: list[int]) -> None:
    configure_logging()
    grid = Grid.from_yaml("cpu-v2")
    last_stage = finished_cells(grid, f"strategy={'|'.join(strategies)}", range(grid.stages - 1, grid.stages))
    settings = {(cell.dataset, cell.backbone, cell.strategy, cell.sweep) for cell in last_stage}
    taken = [seed for seed in seeds if seed in grid.seeds]
    if taken:
        raise SystemExit(f"Seeds {taken} are the grid's own; choose others (the grid has {grid.seeds}).")
    for dataset, backbone, strategy, sweep in sorted(settings):
        for seed in seeds:
            cell = Cell(dataset, backbone, strategy, seed, sweep)
            print(f"{cell.path}: {run_cell(grid, cell, MORE_RUNS)}", flush=True)


def table(strategies: Sequence[str] = STRATEGIES) -> str:
    runs = grid_runs()
    runs = runs[runs["strategy"].isin(strategies)]
    # The settings compare on the seeds they share (the search's seed), so the grid's choice stands with more seeds.
    three = grid_summary(runs)
    every = grid_summary(pd.concat([runs, collect(MORE_RUNS)[0]]))
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
            cells = [dataset, strategy, row.settings, mean_std(row3), f"{mean_std(row)} ({row.n})"]
            if strategy in others:
                ref3, ref = three.loc[(dataset, reference)], every.loc[(dataset, reference)]
                beyond = ["yes" if below_beyond_spreads(*pair) else "no" for pair in ((ref3, row3), (ref, row))]
                cells += [f"{gap(ref3, row3):+.3f}", f"{gap(ref, row):+.3f}", *beyond]
            else:
                cells += ["–"] * 4
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
