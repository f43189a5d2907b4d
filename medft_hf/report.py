"""The study report: any folder of `results.json` (and `failed.json`) into tables, claim checks, paired
comparisons against full fine-tuning, figures and a `report.md`.

Selection is honest: for each dataset × backbone × strategy, the swept setting (e.g. the learning rate) with the
best mean *validation* score over seeds is kept, and only then are its *test* scores reported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import MedftError, exit_on_error
from .results import CALIBRATION, METRICS, RESULTS_FILE, RunResult
from .strategies import STRATEGIES

SETTING_COLUMNS = ("learning_rate", "strategy_config", "augmentation")
CASE = ["dataset", "backbone"]


# ---- collecting -----------------------------------------------------------------------------------------------
def collect(root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A tidy table with one row per finished run, and one with one row per failed cell."""
    root = Path(root)
    rows = [_row(RunResult.load(path), path.parent, root) for path in sorted(root.rglob(RESULTS_FILE))]
    failed = []
    for path in sorted(root.rglob("failed.json")):
        if not (path.parent / RESULTS_FILE).exists():
            record = json.loads(path.read_text())
            failed.append({"cell": str(path.parent.relative_to(root)), "error": record.get("error", "")})
    if not rows:
        raise MedftError(f"{root}: no {RESULTS_FILE} found. Point the report at a folder of finished runs.")
    return pd.DataFrame(rows), pd.DataFrame(failed, columns=["cell", "error"])


def _row(result: RunResult, folder: Path, root: Path) -> dict[str, Any]:
    row = {
        "run": str(folder.relative_to(root)),
        "dataset": result.dataset_name,
        "backbone": result.architecture,
        "strategy": result.strategy,
        "seed": result.seed,
        "learning_rate": result.learning_rate,
        "strategy_config": json.dumps(result.strategy_config, sort_keys=True),
        "augmentation": result.augmentation,
        "image_size": result.image_size,
        "epochs": result.num_train_epochs,
        "train_runtime_s": result.train_runtime_s,
        "device": result.environment["device"],
    }
    for split, metrics in (("validation", result.validation), ("test", result.test or {})):
        for metric in (*METRICS, *CALIBRATION):  # calibration is NaN for runs made before it was recorded
            row[f"{split}_{metric}"] = metrics.get(metric, np.nan)
    return row


# ---- selection and tables -------------------------------------------------------------------------------------
def select_on_validation(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Keep, per dataset × backbone × strategy, the runs of the setting with the best mean validation score."""
    keys = [*CASE, "strategy"]
    means = runs.groupby([*keys, *SETTING_COLUMNS], as_index=False)[f"validation_{metric}"].mean()
    best = means.loc[means.groupby(keys)[f"validation_{metric}"].idxmax(), [*keys, *SETTING_COLUMNS]]
    return runs.merge(best, on=[*keys, *SETTING_COLUMNS])


def summary(selected: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and std of the test metric over seeds, one row per case and strategy."""
    grouped = selected.groupby([*CASE, "strategy"])[f"test_{metric}"]
    table = grouped.agg(["mean", "std", "count"]).reset_index()
    settings = selected.groupby([*CASE, "strategy"])["learning_rate"].first().reset_index()
    return table.merge(settings, on=[*CASE, "strategy"])


def _ordered(strategies) -> list[str]:
    return [name for name in STRATEGIES if name in set(strategies)]


def paper_table(table: pd.DataFrame, metric: str) -> str:
    """Markdown: one row per dataset × backbone, each strategy's test mean ± std (best in bold) and Δ to ft."""
    strategies = _ordered(table["strategy"])
    header = "| dataset | backbone | " + " | ".join(strategies) + " |"
    lines = [header, "|---|---|" + "---|" * len(strategies)]
    for (dataset, backbone), case in table.groupby(CASE):
        by = case.set_index("strategy")
        best = by["mean"].max()
        ft = by["mean"].get("ft", np.nan)
        cells = []
        for name in strategies:
            if name not in by.index:
                cells.append("–")
                continue
            mean, std = by.at[name, "mean"], by.at[name, "std"]
            text = f"{mean:.3f} ± {0.0 if np.isnan(std) else std:.3f}"
            if np.isclose(mean, best):
                text = f"**{text}**"
            if name != "ft" and not np.isnan(ft):
                text += f" ({mean - ft:+.3f})"
            cells.append(text)
        lines.append(f"| {dataset} | {backbone} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the paper's claims, computed -----------------------------------------------------------------------------
def claim_checks(table: pd.DataFrame) -> dict[str, Any]:
    """How often each strategy beats ft, its largest gain over ft, and per backbone how often ft is not the best."""
    wide = table.pivot_table(index=CASE, columns="strategy", values="mean")
    if "ft" not in wide:
        raise MedftError("the claim checks compare against 'ft', which is not among the results.")
    beats, largest = {}, {}
    for name in _ordered(wide.columns):
        if name == "ft":
            continue
        delta = (wide[name] - wide["ft"]).dropna()
        beats[name] = {"wins": int((delta > 0).sum()), "cases": int(delta.size)}
        if delta.size:
            case = delta.idxmax()
            largest[name] = {"delta": float(delta.max()), "dataset": case[0], "backbone": case[1]}
    winners = wide.idxmax(axis=1)
    per_backbone = {
        backbone: {"non_ft_best": int((group != "ft").sum()), "cases": int(group.size)}
        for backbone, group in winners.groupby(level="backbone")
    }
    return {"beats_ft": beats, "largest_gain_over_ft": largest, "non_ft_best_per_backbone": per_backbone}


def claims_markdown(claims: dict[str, Any]) -> str:
    lines = ["| strategy | beats ft (cases) | share | largest gain over ft | where |", "|---|---|---|---|---|"]
    for name, record in claims["beats_ft"].items():
        gain = claims["largest_gain_over_ft"].get(name)
        share = record["wins"] / record["cases"] if record["cases"] else float("nan")
        where = f"{gain['dataset']} / {gain['backbone']}" if gain else "–"
        gain_text = f"{gain['delta']:+.3f}" if gain else "–"
        lines.append(f"| {name} | {record['wins']} / {record['cases']} | {share:.0%} | {gain_text} | {where} |")
    lines += ["", "| backbone | cases where a strategy other than ft is best |", "|---|---|"]
    per_backbone = claims["non_ft_best_per_backbone"]
    lines += [f"| {backbone} | {r['non_ft_best']} / {r['cases']} |" for backbone, r in per_backbone.items()]
    return "\n".join(lines)


# ---- paired comparison with ft --------------------------------------------------------------------------------
def paired_vs_ft(selected: pd.DataFrame, metric: str, resamples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Per strategy, the test difference to ft paired by case and seed, with a 95% bootstrap interval over
    those pairs. A win whose interval contains 0 is within the noise."""
    column = f"test_{metric}"
    ft = selected[selected["strategy"] == "ft"].set_index([*CASE, "seed"])[column]
    rng = np.random.default_rng(seed)
    rows = []
    for name in _ordered(selected["strategy"]):
        if name == "ft":
            continue
        other = selected[selected["strategy"] == name].set_index([*CASE, "seed"])[column]
        differences = (other - ft).dropna().to_numpy()
        if differences.size == 0:
            continue
        means = rng.choice(differences, size=(resamples, differences.size), replace=True).mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        rows.append({"strategy": name, "pairs": differences.size, "mean_difference": differences.mean(),
                     "ci_low": low, "ci_high": high,
                     "verdict": "better" if low > 0 else "worse" if high < 0 else "within noise"})  # fmt: skip
    return pd.DataFrame(rows)


def paired_markdown(paired: pd.DataFrame) -> str:
    lines = ["| strategy | pairs | mean Δ vs ft | 95% bootstrap interval | verdict |", "|---|---|---|---|---|"]
    for row in paired.itertuples():
        interval = f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
        lines.append(f"| {row.strategy} | {row.pairs} | {row.mean_difference:+.3f} | {interval} | {row.verdict} |")
    return "\n".join(lines)


# ---- figures --------------------------------------------------------------------------------------------------
def figures(root: Path, selected: pd.DataFrame, table: pd.DataFrame, metric: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    wide = table.pivot_table(index="strategy", columns=CASE, values="mean")
    if "ft" in wide.index:
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

    for run in first_case.itertuples():  # what a strategy reports per epoch about itself (e.g. Auto-RGN's factors)
        series = STRATEGIES[run.strategy].state_series(RunResult.load(root / run.run).strategy_state)
        if not series:
            continue
        grid = np.array(list(series.values()))
        fig, ax = plt.subplots(figsize=(1.5 + 0.8 * grid.shape[1], 1 + 0.35 * grid.shape[0]))
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_yticks(range(grid.shape[0]), list(series))
        ax.set_xticks(range(grid.shape[1]), [str(e + 1) for e in range(grid.shape[1])])
        ax.set(xlabel="epoch", title=f"{run.strategy}: per-epoch factors\n{run.dataset} / {run.backbone}")
        fig.colorbar(image, ax=ax, label="factor")
        fig.tight_layout()
        fig.savefig(out / f"{run.strategy}_factors.png", dpi=120)
        plt.close(fig)
        made.append(f"{run.strategy}_factors.png")
    return made


# ---- the report -----------------------------------------------------------------------------------------------
def write_report(root: str | Path, out: str | Path, metric: str = "balanced_accuracy", command: str = "") -> Path:
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, failed = collect(root)
    runs.to_csv(out / "runs.csv", index=False)
    runs.to_parquet(out / "runs.parquet", index=False)
    selected = select_on_validation(runs, metric)
    table = summary(selected, metric)
    has_ft = "ft" in set(table["strategy"])
    claims = claim_checks(table) if has_ft else None
    paired = paired_vs_ft(selected, metric)
    (out / "claims.json").write_text(json.dumps(claims, indent=2))
    paired.to_csv(out / "paired_vs_ft.csv", index=False)
    no_ft = "No `ft` runs in these results: nothing to compare against."
    made = figures(root, selected, table, metric, out)

    def values(column: str) -> list:
        return sorted(runs[column].unique().tolist())

    chosen = table.pivot_table(index=CASE, columns="strategy", values="learning_rate", aggfunc="first")
    chosen = chosen[_ordered(chosen.columns)]
    text = [
        "# Study report",
        "",
        f"Produced by `medft-report {root} --output_dir {out}`" + (f" after `{command}`." if command else "."),
        "",
        f"- Runs: {len(runs)} finished, {len(failed)} failed; seeds {values('seed')}.",
        f"- Hardware: {', '.join(values('device'))}; training time of all runs together "
        f"{runs['train_runtime_s'].sum() / 60:.0f} min.",
        f"- Image size {values('image_size')} px, epochs {values('epochs')}.",
        f"- Metric: test `{metric}`, mean ± std over seeds. Each strategy's learning rate was chosen per dataset and "
        f"backbone by mean validation `{metric}` from {values('learning_rate')}; the test split was not used to "
        "choose.",
        "",
        "## Test results (best per row in bold; in brackets: difference to ft)",
        "",
        paper_table(table, metric),
        "",
        "## The paper's claims, checked on these runs",
        "",
        "Davila et al. (2024) report that LP-FT beats full fine-tuning in more than half of the cases, that Auto-RGN "
        "gains up to 11% on some modalities, and that DenseNet benefits most from alternatives to full fine-tuning.",
        "",
        claims_markdown(claims) if has_ft else no_ft,
        "",
        "## Paired comparison with ft (differences paired by dataset, backbone and seed)",
        "",
        paired_markdown(paired) if has_ft else no_ft,
        "",
        "## Learning rate chosen on validation",
        "",
        _markdown(chosen.reset_index()),
        "",
        "## Figures",
        "",
        *[f"![{name}]({name})" for name in made],
        "",
        "## Failed cells",
        "",
        "\n".join(f"- `{row.cell}`: {row.error}" for row in failed.itertuples()) or "None.",
        "",
        "Tables: `runs.csv` / `runs.parquet` (one row per run), `paired_vs_ft.csv`, `claims.json`.",
    ]
    report = out / "report.md"
    report.write_text("\n".join(text) + "\n")
    return report


def _markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * frame.shape[1]]
    for row in frame.to_numpy():
        lines.append("| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


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
