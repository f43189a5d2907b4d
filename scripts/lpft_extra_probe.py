"""LP-FT with its probe on top of the fine-tuning epochs (issue 10): Kumar et al.'s protocol, 1 epoch of linear
probing and then 8 of fine-tuning, on images (hub_configs/benchmarks/lpft-extra-probe.yaml) and on stored features
(lpft-stored-probe.yaml), beside the cpu-v2 grid's FT (8 epochs) and the default LP-FT, whose probe is 1 of the 8
epochs (docs/results/lpft-share). Each LP-FT's fine-tuning rate is chosen on validation by its grid's search; nothing
is chosen between the protocols here, so the test split is only read, to set each beside FT as issue 10 asks.

    medft-benchmark lpft-extra-probe --output_dir docs/results/lpft-extra-probe/runs     # resumable: rerun to go on
    medft-benchmark lpft-stored-probe --output_dir docs/results/lpft-stored-probe/runs
    python scripts/lpft_extra_probe.py                          # docs/results/lpft-extra-probe/comparison.md
"""

from __future__ import annotations

from cpu_v2_lite0 import METRIC, ROOT, against, grid_runs, grid_summary, mean_std, validation_means

from medft_hf.report import collect
from medft_hf.results import RESULTS_FILE, RunResult

DOCS = ROOT / "docs/results/lpft-extra-probe"
PROTOCOLS = {
    "lpft-share": ("1 of 8 (the default)", ROOT / "docs/results/lpft-share/runs"),
    "lpft-extra-probe": ("1 + 8", DOCS / "runs"),
    "lpft-stored-probe": ("1 on stored features + 8", ROOT / "docs/results/lpft-stored-probe/runs"),
}


def table() -> str:
    runs = {name: collect(folder)[0] for name, (_, folder) in PROTOCOLS.items()}
    summaries = {name: grid_summary(frame).xs("lpft", level="strategy") for name, frame in runs.items()}
    validation = {name: validation_means(frame).xs("lpft", level="strategy") for name, frame in runs.items()}
    ft = grid_summary(grid_runs()).xs("ft", level="strategy")
    header = " | ".join(
        f"LP-FT {label}: fine-tuning rate, validation, test, FT minus it, below FT beyond both spreads"
        for label, _ in PROTOCOLS.values()
    )
    lines = [f"| dataset | FT (cpu-v2, 8 epochs): test {METRIC} | {header} |", "|---|---|" + "---|" * len(PROTOCOLS)]
    for dataset in sorted(ft.index):
        reference = ft.loc[dataset]
        cells = [mean_std(reference)]
        for name in PROTOCOLS:
            row = summaries[name].loc[dataset]
            rate = row.settings.split("ft_learning_rate=")[1]
            cells.append(f"{rate}, {validation[name][dataset]:.3f}, {against(reference, row)}")
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    means = ", ".join(f"LP-FT {label} {validation[name].mean():.4f}" for name, (label, _) in PROTOCOLS.items())
    lines += ["", f"Mean validation score over the datasets: {means}."]
    for name, (_, folder) in list(PROTOCOLS.items())[1:]:
        seconds = sum(RunResult.load(path).train_runtime_s for path in folder.rglob(RESULTS_FILE))
        lines += ["", f"The {name} grid's runs (rungs included) trained for {seconds / 60:.0f} minutes in all."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    (DOCS / "comparison.md").write_text(table())
    print((DOCS / "comparison.md").read_text())
