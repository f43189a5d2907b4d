"""The study report: any folder of `results.json` (and `failed.json`) into tables, verdicts on the paper's claims,
a dataset-level test of each strategy against full fine-tuning, figures and a `report.md`.

Selection is honest: for each dataset × backbone × strategy, the swept setting (every swept key: learning rate,
SP's α, LP-FT's fine-tuning rate...) with the best mean *validation* score is kept, and only then are its *test*
scores reported. The report is a pure function of the `results.json` files: rebuilt, it is byte-for-byte the same.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .claims import best_alternative_per_backbone, paper_claims
from .errors import MedftError, exit_on_error
from .report_stats import (
    ALPHA,
    CASE,
    NOTABLE_GAIN,
    REFERENCE,
    case_differences,
    cases_needed,
    dataset_level_tests,
    smallest_p,
)
from .results import CALIBRATION, METRICS, RESULTS_FILE, RUNGS_FOLDER, RunResult, ranked_settings
from .strategies import STRATEGIES

# What identifies a setting of runs made outside a study grid (a study cell's folder names its sweep point).
SETTING_COLUMNS = ("learning_rate", "strategy_config", "augmentation", "class_weights")
TABLE_METRICS = ("balanced_accuracy", "auroc")
# train.py keeps the checkpoint with the best validation balanced accuracy (its default metric_for_best_model),
# which is the one tested; results.json does not record the metric, so the report assumes the default.
BEST_EPOCH_METRIC = "balanced_accuracy"
SWEEP_KEY = re.compile(r"([A-Za-z_]\w*)=(.*?)(?=-[A-Za-z_]\w*=|$)")  # "learning_rate=0.001-sp_alpha=0.01"


# ---- collecting -----------------------------------------------------------------------------------------------
def collect(root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A tidy table with one row per finished run, and one with one row per failed cell. A study's successive-halving
    runs (`rungs/`) are left out: they chose settings, they are not results."""
    root = Path(root)
    rows = [_row(RunResult.load(path), path.parent, root) for path in _outside_rungs(root, RESULTS_FILE)]
    failed = []
    for path in _outside_rungs(root, "failed.json"):
        if not (path.parent / RESULTS_FILE).exists():
            record = json.loads(path.read_text())
            failed.append({"cell": str(path.parent.relative_to(root)), "error": record.get("error", "")})
    if not rows:
        raise MedftError(f"{root}: no {RESULTS_FILE} found. Point the report at a folder of finished runs.")
    return pd.DataFrame(rows), pd.DataFrame(failed, columns=["cell", "error"])


def _outside_rungs(root: Path, name: str) -> list[Path]:
    return [path for path in sorted(root.rglob(name)) if path.relative_to(root).parts[0] != RUNGS_FOLDER]


def _rung_line(root: Path) -> list[str]:
    """The search's cost, when the runs were chosen by successive halving (a grid's `search`)."""
    rungs = [RunResult.load(path) for path in sorted((root / RUNGS_FOLDER).rglob(RESULTS_FILE))]
    if not rungs:
        return []
    epochs = ", ".join(str(e) for e in sorted({int(r.num_train_epochs) for r in rungs}))
    return [
        f"- Search: {len(rungs)} more runs of {epochs} epochs ranked each strategy's settings on validation "
        f"(successive halving, `{RUNGS_FOLDER}/`; not in the tables), {sum(r.train_runtime_s for r in rungs) / 60:.0f} "
        "min of training."
    ]


def _row(result: RunResult, folder: Path, root: Path) -> dict[str, Any]:
    run = folder.relative_to(root)
    parts = run.parts
    # A study cell lives in <dataset>/<backbone>/<strategy>/<sweep point>/seed<k>: its case is named by the grid's
    # catalog entries, so two entries of one architecture (or one dataset folder) stay two cases.
    in_grid = len(parts) >= 5 and parts[-3] == result.strategy and parts[-1] == f"seed{result.seed}"
    if in_grid:
        dataset, backbone, setting = parts[-5], parts[-4], parts[-2]
        swept = dict(SWEEP_KEY.findall(setting))
    else:
        dataset, backbone, swept = result.dataset_name, result.architecture, {}
        values = {key: getattr(result, key) for key in SETTING_COLUMNS}
        setting = json.dumps(values, sort_keys=True)
    settings = {"learning_rate": f"{result.learning_rate:g}", **swept}
    best = result.curve("validation", BEST_EPOCH_METRIC)
    row = {
        "run": str(run),
        "dataset": dataset,
        "backbone": backbone,
        "architecture": result.architecture,
        "strategy": result.strategy,
        "seed": result.seed,
        "setting": setting,
        "settings": ", ".join(f"{key}={value}" for key, value in settings.items()),
        "learning_rate": result.learning_rate,
        "strategy_config": json.dumps(result.strategy_config, sort_keys=True),
        "augmentation": result.augmentation,
        "image_size": result.image_size,
        "epochs": result.num_train_epochs,
        "train_images": result.num_examples.get("train", np.nan),
        "best_epoch": result.epochs[int(np.nanargmax(best))] if not np.isnan(best).all() else np.nan,
        "train_runtime_s": result.train_runtime_s,
        "device": result.environment["device"],
    }
    for split, metrics in (("validation", result.validation), ("test", result.test or {})):
        for metric in (*METRICS, *CALIBRATION):  # calibration is NaN for runs made before it was recorded
            row[f"{split}_{metric}"] = metrics.get(metric, np.nan)
    return row


# ---- selection and tables -------------------------------------------------------------------------------------
def select_on_validation(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Keep, per dataset × backbone × strategy, the runs of the setting with the best mean validation score, on the
    seeds every setting has (a sweep run on seed 0 whose winner then ran on more seeds compares on seed 0)."""
    column = f"validation_{metric}"
    chosen = []
    for _, group in runs.groupby([*CASE, "strategy"], sort=True):
        shared = set.intersection(*group.groupby("setting")["seed"].agg(set))
        scored = group[group["seed"].isin(shared)] if shared else group
        best = ranked_settings(scored.groupby("setting")[column].mean().to_dict())[0]
        chosen.append(group[group["setting"] == best])
    return pd.concat(chosen, ignore_index=True)


def summary(selected: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per case and strategy: n seeds, test mean and std of each table metric, the chosen settings and the
    best epoch of each seed (in seed order)."""
    metrics = list(dict.fromkeys([metric, *TABLE_METRICS]))
    ordered = selected.sort_values([*CASE, "strategy", "seed"])
    aggregations: dict[str, tuple[str, Any]] = {"n": ("seed", "size")}
    for name in metrics:
        aggregations[f"test_{name}_mean"] = (f"test_{name}", "mean")
        aggregations[f"test_{name}_std"] = (f"test_{name}", "std")
    aggregations |= {
        "learning_rate": ("learning_rate", "first"),
        "settings": ("settings", "first"),
        "best_epochs": ("best_epoch", lambda epochs: " ".join("–" if np.isnan(e) else f"{e:g}" for e in epochs)),
    }
    return ordered.groupby([*CASE, "strategy"], sort=True).agg(**aggregations).reset_index()


def _ordered(strategies) -> list[str]:
    return [name for name in STRATEGIES if name in set(strategies)]


def _mean_std(mean: float, std: float, pm: str = "±") -> str:
    return f"{mean:.3f} {pm} {'–' if np.isnan(std) else f'{std:.3f}'}"


def wide_rows(table: pd.DataFrame, metric: str) -> tuple[list[str], list[tuple[str, str, list[tuple]]]]:
    """The paper-style layout shared by the markdown and LaTeX tables: per case, each strategy's
    (mean, std, is best, Δ to ft) or None where it did not run."""
    strategies = _ordered(table["strategy"])
    rows = []
    for (dataset, backbone), case in table.groupby(CASE, sort=True):
        by = case.set_index("strategy")
        means = by[f"test_{metric}_mean"]
        ft = means.get(REFERENCE, np.nan)
        cells = [
            (means[name], by.at[name, f"test_{metric}_std"], bool(np.isclose(means[name], means.max())),
             means[name] - ft if name != REFERENCE else np.nan) if name in by.index else None
            for name in strategies
        ]  # fmt: skip
        rows.append((dataset, backbone, cells))
    return strategies, rows


def paper_table(table: pd.DataFrame, metric: str) -> str:
    """Markdown: one row per dataset × backbone, each strategy's test mean ± std (best in bold) and Δ to ft."""
    strategies, rows = wide_rows(table, metric)
    lines = ["| dataset | backbone | " + " | ".join(strategies) + " |", "|---|---|" + "---|" * len(strategies)]
    for dataset, backbone, cells in rows:
        texts = []
        for cell in cells:
            if cell is None:
                texts.append("–")
                continue
            mean, std, best, delta = cell
            text = f"**{_mean_std(mean, std)}**" if best else _mean_std(mean, std)
            texts.append(text if np.isnan(delta) else f"{text} ({delta:+.3f})")
        lines.append(f"| {dataset} | {backbone} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def latex_table(table: pd.DataFrame, metric: str) -> str:
    """The paper-style table as a LaTeX tabular (booktabs), best per row in bold; written by hand so the report
    needs no jinja2 (pandas' to_latex does)."""
    strategies, rows = wide_rows(table, metric)
    lines = [
        r"\begin{tabular}{ll" + "c" * len(strategies) + "}",
        r"\toprule",
        " & ".join(["dataset", "backbone", *map(_tex, strategies)]) + r" \\",
        r"\midrule",
    ]
    for dataset, backbone, cells in rows:
        texts = []
        for cell in cells:
            text = "--" if cell is None else _mean_std(cell[0], cell[1], r"$\pm$").replace("–", "--")
            texts.append(rf"\textbf{{{text}}}" if cell is not None and cell[2] else text)
        lines.append(" & ".join([_tex(dataset), _tex(backbone), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return re.sub(r"([_&%#$])", r"\\\1", text)


def case_table(table: pd.DataFrame, metric: str) -> str:
    """Markdown: one row per case and strategy, with both table metrics, the chosen settings, best epochs and n."""
    metrics = list(dict.fromkeys([metric, *TABLE_METRICS]))
    header = ["dataset", "backbone", "strategy", "n", *(f"test {m}" for m in metrics), "chosen settings",
              "best epoch per seed"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rank = {name: i for i, name in enumerate(STRATEGIES)}
    for row in table.assign(rank=table["strategy"].map(rank)).sort_values([*CASE, "rank"]).to_dict("records"):
        scores = [_mean_std(row[f"test_{m}_mean"], row[f"test_{m}_std"]) for m in metrics]
        cells = [row["dataset"], row["backbone"], row["strategy"], str(row["n"]), *scores, row["settings"],
                 row["best_epochs"]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- verdicts and the test against ft -------------------------------------------------------------------------
def claims_markdown(claims: list) -> str:
    lines = ["| claim | verdict | statistics | why |", "|---|---|---|---|"]
    lines += [f"| {c.claim} | **{c.verdict}** | {c.statistics} | {c.why} |" for c in claims]
    return "\n".join(lines)


def tests_markdown(tests: pd.DataFrame) -> str:
    header = ["strategy", "cases", "mean Δ", "median Δ", "95% bootstrap interval", "gains / notable",
              "signed-rank p", "Holm p", "finding"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in tests.itertuples():
        lines.append(
            f"| {row.strategy} | {row.cases} | {row.mean_difference:+.3f} | {row.median_difference:+.3f} | "
            f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}] | {row.gains} / {row.notable_gains} | {row.p_value:.3g} | "
            f"{row.p_holm:.3g} | {row.finding} |"
        )
    return "\n".join(lines)


def scale_paragraph(runs: pd.DataFrame, comparisons: int) -> str:
    """What a study of this size can and cannot show next to the paper's, from the runs themselves."""
    backbones = runs.groupby("backbone")["architecture"].first()
    cases = len(runs[CASE].drop_duplicates())
    smallest = smallest_p(cases)
    images = runs["train_images"].dropna()
    text = [
        f"These runs: {runs['dataset'].nunique()} datasets, {len(backbones)} backbone(s) "
        f"({', '.join(f'{name}: {arch}' for name, arch in backbones.items())}), seeds {_listed(runs, 'seed')}, "
        f"{_listed(runs, 'image_size')} px, {_listed(runs, 'epochs')} epochs"
        + (f", {images.min():g}–{images.max():g} training images per dataset" if len(images) else "")
        + ". The paper compares three backbones (ResNet-50, DenseNet-121, VGG-19) over several imaging modalities.",
    ]  # fmt: skip
    if comparisons:
        needed = cases_needed(comparisons)
        text.append(
            f"Each comparison with ft rests on {cases} cases (dataset × backbone): the exact signed-rank test's "
            f"smallest p is then {smallest:.3g}, {min(1.0, smallest * comparisons):.3g} after Holm over {comparisons} "
            f"comparisons; a claim can be confirmed at {ALPHA} only from {needed} cases on"
            + (
                ", so here the test cannot confirm any strategy against ft, whatever the effect (an interval can "
                "still exclude a notable gain)."
                if cases < needed
                else ", as here, and only by an effect of one sign in nearly every case."
            )
        )
    if len(backbones) < 2:
        text.append("With one backbone, nothing here speaks to differences between backbones (the DenseNet claim).")
    text.append(
        "Small images, short schedules and few training images put the strategies in a low-data, low-resolution "
        "regime: a verdict here says how they behave at this scale, not whether the paper's numbers hold at its own."
    )
    return " ".join(text)


def _values(runs: pd.DataFrame, column: str) -> list:
    return sorted(runs[column].dropna().unique().tolist())


def _listed(runs: pd.DataFrame, column: str) -> str:
    return ", ".join(f"{value:g}" for value in _values(runs, column))


# ---- figures --------------------------------------------------------------------------------------------------
def figures(root: Path, selected: pd.DataFrame, table: pd.DataFrame, metric: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    wide = table.pivot_table(index="strategy", columns=CASE, values=f"test_{metric}_mean")
    if REFERENCE in wide.index and len(wide.index) > 1:
        delta = (wide - wide.loc["ft"]).drop(index="ft").reindex(_ordered(wide.index.drop("ft")))
        fig, ax = plt.subplots(figsize=(2 + 1.6 * delta.shape[1], 1 + 0.5 * delta.shape[0]))
        limit = max(float(np.nanmax(np.abs(delta.to_numpy()))), 1e-3)
        image = ax.imshow(delta.to_numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(delta.shape[1]), [f"{d}\n{b}" for d, b in delta.columns], fontsize=8)
        ax.set_yticks(range(delta.shape[0]), delta.index)
        for (i, j), value in np.ndenumerate(delta.to_numpy()):
            ax.text(j, i, f"{value:+.3f}", ha="center", va="center", fontsize=8)
        fig.colorbar(image, ax=ax, label=f"Δ test {metric} vs ft")
        ax.set_title(f"Test {metric}: difference to full fine-tuning (mean over seeds)")
        fig.tight_layout()
        fig.savefig(out / "delta_vs_ft.png", dpi=120)
        plt.close(fig)
        made.append("delta_vs_ft.png")

    first_case = selected.sort_values([*CASE, "seed"]).groupby("strategy").head(1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in first_case.itertuples():
        result = RunResult.load(root / row.run)
        axes[0].plot(result.epochs, result.curve("train_loss"), marker="o", label=row.strategy)
        axes[1].plot(result.epochs, result.curve("validation", metric), marker="o")
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title=f"validation {metric}", xlabel="epoch")
    axes[0].legend(fontsize=8)
    first = first_case.iloc[0]
    fig.suptitle(f"Training curves, one run per strategy ({first.dataset} / {first.backbone}, seed {first.seed})")
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)
    made.append("training_curves.png")

    # What a strategy reports per epoch about itself (e.g. Auto-RGN's factors): one panel per case, its first run.
    first_per_case = selected.sort_values([*CASE, "seed"]).groupby([*CASE, "strategy"]).head(1)
    for strategy, runs in first_per_case.groupby("strategy"):
        panels = [
            (run, series)
            for run in runs.itertuples()
            if (series := STRATEGIES[strategy].state_series(RunResult.load(root / run.run).strategy_state))
        ]
        if not panels:
            continue
        heights = [1 + 0.3 * len(series) for _, series in panels]
        width = 2.5 + 0.8 * max(len(next(iter(series.values()))) for _, series in panels)
        fig, axes = plt.subplots(
            len(panels), 1, figsize=(width, sum(heights)), height_ratios=heights, squeeze=False, layout="constrained"
        )
        for ax, (run, series) in zip(axes[:, 0], panels, strict=True):
            grid = np.array(list(series.values()))
            image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax.set_yticks(range(grid.shape[0]), list(series), fontsize=8)
            ax.set_xticks(range(grid.shape[1]), [str(e + 1) for e in range(grid.shape[1])])
            ax.set_title(f"{run.dataset} / {run.backbone}, seed {run.seed}", fontsize=9)
        axes[-1, 0].set_xlabel("epoch")
        fig.suptitle(f"{strategy}: per-epoch factors")
        fig.colorbar(image, ax=axes[:, 0].tolist(), label="factor")
        fig.savefig(out / f"{strategy}_factors.png", dpi=120)
        plt.close(fig)
        made.append(f"{strategy}_factors.png")
    return made


# ---- the report -----------------------------------------------------------------------------------------------
def write_report(root: str | Path, out: str | Path, metric: str = "balanced_accuracy", command: str = "") -> Path:
    """Every table, figure and report.md in `out`; the text names `root` as given, so a rebuild from the same
    relative path into another folder is byte-for-byte the same."""
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, failed = collect(root)
    runs.to_csv(out / "runs.csv", index=False)
    runs.to_parquet(out / "runs.parquet", index=False)
    selected = select_on_validation(runs, metric)
    table = summary(selected, metric)
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.tex").write_text(latex_table(table, metric))
    others = [name for name in _ordered(table["strategy"]) if name != REFERENCE]
    has_ft = REFERENCE in set(table["strategy"]) and bool(others)  # something to compare with ft
    if has_ft:
        differences = case_differences(selected, metric)
        tests = dataset_level_tests(differences, others)
        architectures = runs.groupby("backbone")["architecture"].first().to_dict()
        claims = paper_claims(selected, metric, differences, tests, architectures)
        alternatives = best_alternative_per_backbone(differences)
    else:
        tests, claims, alternatives = pd.DataFrame(), [], {}
    tests.to_csv(out / "vs_ft.csv", index=False)
    record = {
        "metric": metric,
        "notable_gain": NOTABLE_GAIN,
        "alpha": ALPHA,
        "claims": [claim.as_dict() for claim in claims],
        "best_alternative_per_backbone": alternatives,
    }
    (out / "claims.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    made = figures(root, selected, table, metric, out)
    no_ft = f"Nothing to compare: these results need `{REFERENCE}` runs and runs of another strategy."
    metric_flag = f" --metric {metric}" if metric != "balanced_accuracy" else ""
    text = [
        "# Study report",
        "",
        f"Produced by `medft-report {root}{metric_flag}`" + (f" from the runs of `{command}`." if command else "."),
        "",
        f"- Runs: {len(runs)} finished, {len(failed)} failed; seeds {_values(runs, 'seed')}.",
        f"- Hardware: {', '.join(_values(runs, 'device'))}; training time of all runs together "
        f"{runs['train_runtime_s'].sum() / 60:.0f} min.",
        *_rung_line(root),
        f"- Image size {_values(runs, 'image_size')} px, epochs {_values(runs, 'epochs')}.",
        f"- Metric: test `{metric}`, mean ± std over seeds (– where one seed). Each strategy's setting (the learning "
        f"rate and every swept key) was chosen per dataset and backbone by mean validation `{metric}`, on the seeds "
        "every setting has; the test split was not used to choose.",
        f"- A **notable** gain is Δ ≥ {NOTABLE_GAIN} over ft (about the seed-to-seed spread of these studies); tests "
        f"are two-sided at {ALPHA}.",
        "",
        "## What this study's scale can and cannot show",
        "",
        scale_paragraph(runs, len(others) if has_ft else 0),
        "",
        "## Test results (best per row in bold; in brackets: difference to ft)",
        "",
        paper_table(table, metric),
        "",
        "## The paper's claims: verdicts",
        "",
        "Davila, Colan & Hasegawa (2024, arXiv 2406.10050). **reproduced**: the claimed effect is seen and its test "
        f"reaches {ALPHA} after correction; **not reproduced**: it is not seen, and the data show the opposite at "
        f"{ALPHA} or exclude a notable effect; **inconclusive**: neither; **not testable here**: the runs lack what "
        "the claim is about.",
        "",
        claims_markdown(claims) if has_ft else no_ft,
        "",
        "## Each strategy against ft, over cases",
        "",
        *(
            [
                "Per case (dataset × backbone), the mean over seeds of the paired difference strategy − ft; then over "
                "cases: the mean and median, a 95% bootstrap interval, how many cases gain (and notably), the exact "
                f"two-sided Wilcoxon signed-rank p and its Holm adjustment over the {len(others)} comparisons.",
                "",
                tests_markdown(tests),
            ]
            if has_ft
            else [no_ft]
        ),
        "",
        "Best alternative to ft per backbone (mean Δ over datasets): "
        + (", ".join(f"{b}: {r['strategy']} ({r['mean_difference']:+.3f})" for b, r in alternatives.items()) or "–")
        + ".",
        "",
        "## Per case: both metrics, chosen settings, best epoch, n",
        "",
        case_table(table, metric),
        "",
        "## Figures",
        "",
        *[f"![{name}]({name})" for name in made],
        "",
        "## Failed cells",
        "",
        "\n".join(f"- `{row.cell}`: {row.error}" for row in failed.itertuples()) or "None.",
        "",
        "Tables: `runs.csv` / `runs.parquet` (one row per run), `summary.csv` and `summary.tex` (per case and "
        "strategy), `vs_ft.csv` (the test over cases), `claims.json` (the verdicts).",
    ]
    report = out / "report.md"
    report.write_text("\n".join(text) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="medft-report", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a folder with results.json files (e.g. the output of medft-benchmark)")
    parser.add_argument("--output_dir", required=True, help="where report.md, the tables and figures go")
    parser.add_argument("--metric", default="balanced_accuracy", choices=list(METRICS))
    parser.add_argument("--command", default="", help="the command that produced the results, quoted in report.md")
    args = parser.parse_args(argv)
    with exit_on_error():
        report = write_report(args.results, args.output_dir, args.metric, args.command)
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
