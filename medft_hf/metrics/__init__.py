"""The project's metric, packaged as an `evaluate` module (loads offline) plus the Trainer's compute_metrics."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

import evaluate
import numpy as np
from scipy.special import softmax
from sklearn.metrics import roc_curve
from transformers import EvalPrediction


def load_metric() -> evaluate.EvaluationModule:
    return evaluate.load(str(resources.files("medft_hf.metrics") / "medical_classification"))


def probabilities_of(logits: np.ndarray) -> np.ndarray:
    return softmax(np.asarray(logits, dtype=np.float64), axis=-1)


def compute_classification_metrics(
    logits: np.ndarray, labels: np.ndarray, per_class: bool = False, metric=None, **options
) -> dict:
    """The metric module on a model's logits; `options` go to it (positive_label, threshold, bootstrap_resamples,
    seed)."""
    probabilities = probabilities_of(logits)
    return (metric or load_metric()).compute(
        predictions=probabilities.argmax(-1),
        references=labels,
        prediction_scores=probabilities,
        per_class=per_class,
        **options,
    )


def per_image_outputs(logits: np.ndarray, labels: np.ndarray) -> dict[str, list]:
    """Each image's label and class probabilities (6 significant digits: ~10 kB for 600 images), so that anything
    computed from a split's predictions (intervals, calibration, a metric not thought of yet) can be recomputed from
    results.json."""
    probabilities = [[float(f"{p:.6g}") for p in row] for row in probabilities_of(logits)]
    return {"labels": np.asarray(labels).astype(int).tolist(), "probabilities": probabilities}


def balanced_accuracy_standard_error(confusion_matrix: list[list[int]]) -> float:
    """The standard error of a balanced accuracy: the mean of the per-class recalls, each a binomial proportion over
    its class's images (normal approximation, classes independent; classes without images left out, as the score
    leaves them out). Each recall enters its variance smoothed as (correct + 1) / (images + 2), so that a class
    scored perfectly on a few images still counts as uncertain. It says how far two scores on the same few images
    can differ by chance alone."""
    matrix = np.asarray(confusion_matrix, dtype=np.float64)
    counts = matrix.sum(axis=1)
    present = counts > 0
    recalls = (np.diag(matrix)[present] + 1) / (counts[present] + 2)
    return float(np.sqrt(np.sum(recalls * (1 - recalls) / counts[present])) / present.sum())


def youden_threshold(logits: np.ndarray, labels: np.ndarray, positive_label: int) -> float:
    """The probability threshold on the positive class that maximises sensitivity + specificity − 1 (Youden's J)
    on these (validation) images; applied unchanged to the test split."""
    false_positive_rate, true_positive_rate, thresholds = roc_curve(
        labels, probabilities_of(logits)[:, positive_label], pos_label=positive_label
    )
    best = int(np.argmax(true_positive_rate - false_positive_rate))
    return float(min(thresholds[best], 1.0))


def metrics_for_trainer() -> Callable[[EvalPrediction], dict]:
    """A `compute_metrics` for the Trainer; the module is loaded once, not at every evaluation."""
    metric = load_metric()

    def compute_metrics(prediction: EvalPrediction) -> dict:
        return compute_classification_metrics(prediction.predictions, prediction.label_ids, metric=metric)

    return compute_metrics
