"""The figures of one run (training curves, confusion matrix, reliability diagram), written beside its
results.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .results import RunResult


def run_figures(result: RunResult, folder: str | Path) -> list[str]:
    """Write `training_curves.png`, `confusion_matrix.png` and `reliability_diagram.png`; returns their names."""
    folder = Path(folder)
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_ax.plot(result.epochs, result.curve("train_loss"), marker="o")
    loss_ax.set(title="training loss", xlabel="epoch")
    for metric in ("balanced_accuracy", "auroc"):
        metric_ax.plot(result.epochs, result.curve("validation", metric), marker="o", label=metric)
    metric_ax.set(title="validation", xlabel="epoch", ylim=(0, 1))
    metric_ax.legend()
    fig.suptitle(f"{result.strategy} · {result.architecture} · {result.dataset_name}")
    fig.tight_layout()
    fig.savefig(folder / "training_curves.png", dpi=110)
    plt.close(fig)

    split, metrics = result.split, result.metrics
    matrix = np.asarray(metrics["confusion_matrix"])
    names = result.class_names
    fig, ax = plt.subplots(figsize=(1.6 + 0.7 * len(names), 1.2 + 0.7 * len(names)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({split})")
    fig.tight_layout()
    fig.savefig(folder / "confusion_matrix.png", dpi=110)
    plt.close(fig)

    bins = metrics["reliability"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.plot(bins["confidence"], bins["accuracy"], marker="o", label="this model")
    for confidence, accuracy, count in zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True):
        ax.annotate(str(count), (confidence, accuracy), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel="confidence (top class probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"reliability ({split}): ECE {metrics['ece']:.3f}, Brier {metrics['brier']:.3f}")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "reliability_diagram.png", dpi=110)
    plt.close(fig)
    return ["training_curves.png", "confusion_matrix.png", "reliability_diagram.png"]
