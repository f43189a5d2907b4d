"""The tables behind the validation-chosen defaults (docs/results/defaults, auto-rgn and own-lr), from a folder of
runs of `hub_configs/benchmarks/defaults.yaml`, `auto-rgn.yaml` or `own-lr.yaml`.

    python scripts/defaults_report.py docs/results/defaults/runs
    python scripts/defaults_report.py runs/defaults --choose lpft    # only LP-FT's chosen setting, as a --filter

For each ablation (Auto-RGN's head rule, BatchNorm and optimizer state, LP-FT's fine-tuning rate, FT's augmentation,
and each strategy's learning rate),
every variant's validation and test balanced accuracy per dataset (mean ± std over seeds, n), and the variant chosen:
the highest validation score averaged over datasets, on the seeds every variant has. Then the strategies at their
chosen defaults side by side on test, with whether each is below LP and FT beyond the seed spread (its mean + std
under their mean − std).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields
from pathlib import Path

import pandas as pd

from medft_hf.report import collect
from medft_hf.results import RunResult
from medft_hf.strategies import STRATEGIES

METRIC = "balanced_accuracy"
# What each strategy's variants may differ in: its own flags, the augmentation and the (peak) learning rate.
ABLATIONS = {
    "auto_rgn": ["rgn_head", "rgn_norms", "rgn_fresh_optimizer", "learning_rate"],
    "lpft": ["ft_learning_rate"],
    "ft": ["augmentation", "learning_rate"],
    "lp": ["learning_rate"],
}


def load(root: str) -> pd.DataFrame:
    runs, _ = collect(root)
    configs = runs["strategy_config"].map(json.loads)
    for strategy, keys in ABLATIONS.items():
        # a run made before a flag existed ran at what is now its default
        defaults = {f.name: f.default for f in fields(STRATEGIES[strategy].config_class)}
        for key in set(keys) & set(defaults):
            runs[key] = configs.map(lambda config, key=key, default=defaults[key]: config.get(key, default))
    return runs


def cell(values: pd.Series) -> str:
    if values.empty:
        return "–"
    std = values.std() if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {std:.3f} ({len(values)})"


def ablation(runs: pd.DataFrame, strategy: str, keys: list[str]) -> tuple[str, dict]:
    rows = runs[runs["strategy"] == strategy]
    variants = rows.groupby(keys, dropna=False)
    shared_seeds = set.intersection(*(set(group["seed"]) for _, group in variants))
    # compared on what every variant has: a variant missing a dataset (a failed or unfinished run) is not averaged
    # over the others alone
    shared_datasets = set.intersection(
        *(set(group.loc[group["seed"].isin(shared_seeds), "dataset"]) for _, group in variants)
    )
    datasets = sorted(rows["dataset"].unique())
    lines = [
        f"| {' / '.join(keys)} | "
        + " | ".join(f"{d}: validation | {d}: test" for d in datasets)
        + f" | validation, mean over {_datasets(shared_datasets, datasets)} (seeds {sorted(shared_seeds)}) |",
        "|---|" + "---|---|" * len(datasets) + "---|",
    ]
    scores = {}
    for variant, group in variants:
        variant = variant if isinstance(variant, tuple) else (variant,)
        cells = []
        for dataset in datasets:
            on = group[group["dataset"] == dataset]
            cells += [cell(on[f"validation_{METRIC}"]), cell(on[f"test_{METRIC}"])]
        shared = group[group["seed"].isin(shared_seeds) & group["dataset"].isin(shared_datasets)]
        scores[variant] = shared.groupby("dataset")[f"validation_{METRIC}"].mean().mean()
        lines.append(f"| {' / '.join(map(str, variant))} | " + " | ".join(cells) + f" | {scores[variant]:.4f} |")
    chosen = max(scores, key=scores.get)
    lines.append("")
    if len(scores) == 1:
        lines.append("Only this variant was run: nothing was chosen here.")
    else:
        lines.append(f"Chosen on validation: **{' / '.join(map(str, chosen))}**.")
    return "\n".join(lines), dict(zip(keys, chosen, strict=True))


def comparison(runs: pd.DataFrame, chosen: dict[str, dict]) -> str:
    picked = {}
    for strategy, setting in chosen.items():
        rows = runs[runs["strategy"] == strategy]
        for key, value in setting.items():
            rows = rows[rows[key] == value]
        picked[strategy] = rows
    order = [name for name in ("ft", "lp", "lpft", "auto_rgn") if name in picked]
    datasets = sorted(runs["dataset"].unique())
    lines = [
        "| dataset | " + " | ".join(order) + " | auto_rgn below LP and FT beyond the spread? | lpft below FT? |",
        "|---|" + "---|" * len(order) + "---|---|",
    ]
    for dataset in datasets:
        test = {name: picked[name][picked[name]["dataset"] == dataset][f"test_{METRIC}"] for name in order}
        stats = {name: (values.mean(), values.std() if len(values) > 1 else 0.0) for name, values in test.items()}

        lines.append(
            f"| {dataset} | "
            + " | ".join(cell(test[name]) for name in order)
            + f" | {_below(stats, 'auto_rgn', ['lp', 'ft']) if 'auto_rgn' in stats else '–'} | "
            + f"{_below(stats, 'lpft', ['ft']) if 'lpft' in stats else '–'} |"
        )
    return "\n".join(lines)


def factor_figure(runs: pd.DataFrame, root: str, path: str) -> None:
    """Auto-RGN's mean rate factor of the backbone's blocks and of the head, per epoch, one panel per variant of the
    flags the runs vary (seed 0, every dataset): with the official head rule the backbone gets a few percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = runs[(runs["strategy"] == "auto_rgn") & (runs["seed"] == 0)]
    varied = [key for key in ABLATIONS["auto_rgn"] if rows[key].nunique() > 1]
    variants = list(rows.groupby(varied)) if varied else [((), rows)]
    columns = min(2, len(variants))
    rows_of_panels = math.ceil(len(variants) / columns)
    fig, axes = plt.subplots(
        rows_of_panels, columns, figsize=(5 * columns, 3.4 * rows_of_panels), sharey=True, squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for ax, (variant, group) in zip(axes.flat, variants, strict=False):
        for row in group.itertuples():
            series = STRATEGIES["auto_rgn"].state_series(RunResult.load(Path(root) / row.run).strategy_state)
            head = series.pop("head")
            backbone = [sum(values) / len(values) for values in zip(*series.values(), strict=True)]
            epochs = range(1, len(head) + 1)
            line = ax.plot(epochs, backbone, marker="o", label=f"{row.dataset}: backbone blocks")[0]
            ax.plot(epochs, head, linestyle="--", color=line.get_color())
        values = variant if isinstance(variant, tuple) else (variant,)
        ax.set(title=" / ".join(map(str, values)), xlabel="epoch", yscale="log", ylim=(1e-3, 1.5))
        ax.set_ylabel("mean rate factor (× base rate)")
    fig.suptitle(f"Auto-RGN, {' / '.join(varied) or 'defaults'} (dashed: the head)")
    axes.flat[len(variants) - 1].legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _datasets(shared: set[str], every: list[str]) -> str:
    return "datasets" if shared == set(every) else ", ".join(sorted(shared))


def _below(stats: dict[str, tuple[float, float]], name: str, others: list[str]) -> str:
    """'yes' when `name`'s mean + std is under every other's mean − std: below beyond the seed spread."""
    mean, std = stats[name]
    return "yes" if all(mean + std < stats[o][0] - stats[o][1] for o in others) else "no"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="a folder of runs of hub_configs/benchmarks/defaults.yaml")
    parser.add_argument(
        "--choose", choices=list(ABLATIONS), help="print only this strategy's chosen setting (key=value,...)"
    )
    parser.add_argument("--figure", help="also draw Auto-RGN's rate factors per variant into this PNG")
    args = parser.parse_args(argv)
    runs = load(args.runs)
    if args.choose:
        chosen = ablation(runs, args.choose, ABLATIONS[args.choose])[1]
        swept = [key for key in chosen if runs.loc[runs["strategy"] == args.choose, key].nunique() > 1]
        print(",".join(f"{key}={chosen[key]}" for key in swept))  # a medft-benchmark --filter over the swept keys
        return
    chosen = {}
    for strategy, keys in ABLATIONS.items():
        if strategy not in set(runs["strategy"]):
            continue
        text, chosen[strategy] = ablation(runs, strategy, keys)
        print(f"### {strategy}: {', '.join(keys)}\n\n{text}\n")
    print(f"### The strategies at the chosen defaults (test {METRIC}, mean ± std over seeds, n)\n")
    print(comparison(runs, chosen))
    if args.figure:
        factor_figure(runs, args.runs, args.figure)


if __name__ == "__main__":
    main()
