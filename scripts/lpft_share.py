"""LP-FT's share of linear probing, chosen on validation (issue 10): the cpu-v2 grid's LP-FT rows (2 of 8 epochs of
probing, the former default) beside the same search and seeds with 1 of 8 (hub_configs/benchmarks/lpft-share.yaml),
EfficientNet-Lite0, the four datasets. The share with the higher validation score, averaged over datasets (each at
its fine-tuning rate chosen on validation, on seeds 0-2), is chosen; the test split is read only after, to set the
chosen LP-FT beside FT as issue 10 asks.

    medft-benchmark lpft-share --output_dir docs/results/lpft-share/runs    # resumable: rerun to go on
    python scripts/lpft_share.py                                             # docs/results/lpft-share/comparison.md
"""

from __future__ import annotations

from cpu_v2_lite0 import METRIC, ROOT, against, grid_runs, grid_summary, mean_std, validation_means

from medft_hf.report import collect

DOCS = ROOT / "docs/results/lpft-share"
SHARES = {2: "cpu-v2 (2 of 8)", 1: "lpft-share (1 of 8)"}


def table() -> str:
    grid = grid_runs()
    runs = {2: grid[grid["strategy"] == "lpft"], 1: collect(DOCS / "runs")[0]}
    validation = {share: validation_means(frame).xs("lpft", level="strategy") for share, frame in runs.items()}
    choice = max(validation, key=lambda share: (validation[share].mean(), -share))
    summaries = {share: grid_summary(frame).xs("lpft", level="strategy") for share, frame in runs.items()}
    ft = grid_summary(grid).xs("ft", level="strategy")
    header = " | ".join(f"{label}: setting, validation" for label in SHARES.values())
    lines = [f"| dataset | {header} |", "|---|" + "---|" * len(SHARES)]
    for dataset in sorted(validation[choice].index):
        cells = [f"{summaries[share].loc[dataset].settings}, {validation[share][dataset]:.3f}" for share in SHARES]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    means = " | ".join(f"**{validation[share].mean():.4f}**" for share in SHARES)
    lines += [f"| mean over datasets | {means} |", "", f"Chosen on validation: **{choice} of 8 epochs of probing**."]
    lines.append("")
    # The test split, read after the choice: each share's LP-FT beside FT, with issue 10's criterion
    header = " | ".join(f"{label}: test, ft minus it, below ft beyond both spreads" for label in SHARES.values())
    lines += [f"| dataset | ft (cpu-v2): test {METRIC} | {header} |", "|---|---|" + "---|" * len(SHARES)]
    for dataset in sorted(ft.index):
        cells = [mean_std(ft.loc[dataset])]
        cells += [against(ft.loc[dataset], summaries[share].loc[dataset]) for share in SHARES]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    (DOCS / "comparison.md").write_text(table())
    print((DOCS / "comparison.md").read_text())
