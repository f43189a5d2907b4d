"""The project's metric, packaged as an `evaluate` module (loads offline) plus the Trainer's compute_metrics."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

import evaluate
import numpy as np
from scipy.special import softmax
from transformers import EvalPrediction

METRIC_NAMES = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


def load_metric() -> evaluate.EvaluationModule:
    return evaluate.load(str(resources.files("medft_hf.metrics") / "medical_classification"))


def compute_classification_metrics(
    logits: np.ndarray, labels: np.ndarray, per_class: bool = False, metric=None
) -> dict:
    probabilities = softmax(np.asarray(logits, dtype=np.float64), axis=-1)
    return (metric or load_metric()).compute(
        predictions=probabilities.argmax(-1),
        references=labels,
        prediction_scores=probabilities,
        per_class=per_class,
    )


def metrics_for_trainer() -> Callable[[EvalPrediction], dict]:
    """A `compute_metrics` for the Trainer; the module is loaded once, not at every evaluation."""
    metric = load_metric()

    def compute_metrics(prediction: EvalPrediction) -> dict:
        return compute_classification_metrics(prediction.predictions, prediction.label_ids, metric=metric)

    return compute_metrics
