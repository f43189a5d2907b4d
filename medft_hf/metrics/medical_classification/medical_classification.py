"""Accuracy, balanced accuracy, macro F1, AUROC and calibration for (possibly imbalanced) medical image
classification; for binary tasks also sensitivity and specificity.

An `evaluate` metric module computed with scikit-learn, so it loads offline:
`evaluate.load("path/to/medical_classification")` (the Hub's own metrics need a download).
"""

import warnings

import datasets
import evaluate
import numpy as np
import torch
from scipy.stats import bootstrap
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017 ("On Calibration of Modern Neural Networks")

_DESCRIPTION = """
Balanced accuracy and macro F1 weigh every class equally, which matters when the disease class is rare.
AUROC uses the predicted class probabilities (`prediction_scores`): binary, the positive class (label 1);
multi-class, one-vs-rest macro average. It is NaN when a class is absent from the references.
Calibration: `ece` is the top-label expected calibration error over 15 equal-width confidence bins (torchmetrics),
`brier` the mean squared error of the probability vector (scikit-learn; binary: of the positive class).
Binary tasks also get `sensitivity` (recall of `positive_label`) and `specificity` (recall of the other class) at
the argmax, and, given a `threshold` on the positive class's probability, the same at that threshold.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): true class ids.
    prediction_scores (`list[list[float]]`): class probabilities, one row per example.
    num_classes (`int`, optional): number of classes (default: the width of `prediction_scores`).
    per_class (`bool`, optional): also return per-class precision/recall/F1, the confusion matrix and the
        reliability diagram's bins.
    positive_label (`int`, optional): binary tasks: the class sensitivity is measured on (default 1).
    threshold (`float`, optional): binary tasks: also sensitivity/specificity when predicting positive at
        P(positive) >= threshold (e.g. a threshold chosen on validation).
    bootstrap_resamples (`int`, optional): if > 0, percentile bootstrap 95% intervals (resampling images within
        each class) on balanced accuracy and AUROC.
    seed (`int`, optional): the bootstrap's random seed (default 0).
Returns:
    accuracy, balanced_accuracy, macro_f1, auroc, ece, brier [, sensitivity, specificity, at_threshold]
    [, per_class, confusion_matrix, reliability] [, intervals].
"""

_CITATION = """
@article{pedregosa2011scikit, title={Scikit-learn: Machine Learning in Python}, author={Pedregosa, F. et al.},
journal={JMLR}, volume={12}, pages={2825--2830}, year={2011}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MedicalClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "prediction_scores": datasets.Sequence(datasets.Value("float64")),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"],
        )

    def _compute(
        self,
        predictions,
        references,
        prediction_scores,
        num_classes=None,
        per_class=False,
        positive_label=1,
        threshold=None,
        bootstrap_resamples=0,
        seed=0,
    ):
        scores = np.asarray(prediction_scores, dtype=np.float64)
        references, predictions = np.asarray(references), np.asarray(predictions)
        num_classes = num_classes or scores.shape[1]
        labels = list(range(num_classes))
        result = {
            "accuracy": float(accuracy_score(references, predictions)),
            "balanced_accuracy": float(balanced_accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
            "auroc": _auroc(references, scores, labels),
            "ece": float(
                multiclass_calibration_error(
                    torch.from_numpy(scores), torch.from_numpy(references), num_classes, n_bins=ECE_BINS, norm="l1"
                )
            ),
            "brier": float(brier_score_loss(references, scores, labels=labels)),
        }
        if num_classes == 2:
            result.update(_sensitivity_specificity(references, predictions, positive_label))
            if threshold is not None:
                at_threshold = np.where(scores[:, positive_label] >= threshold, positive_label, 1 - positive_label)
                result["at_threshold"] = {
                    "threshold": float(threshold),
                    **_sensitivity_specificity(references, at_threshold, positive_label),
                }
        if per_class:
            precision, recall, f1, support = precision_recall_fscore_support(
                references, predictions, labels=labels, zero_division=0
            )
            result["per_class"] = {
                "precision": precision.tolist(),
                "recall": recall.tolist(),
                "f1": f1.tolist(),
                "support": support.tolist(),
            }
            result["confusion_matrix"] = confusion_matrix(references, predictions, labels=labels).tolist()
            result["reliability"] = _reliability(references, scores)
        if bootstrap_resamples:
            result["intervals"] = _intervals(references, predictions, scores, labels, bootstrap_resamples, seed)
        return result


def _sensitivity_specificity(references: np.ndarray, predictions: np.ndarray, positive: int) -> dict[str, float]:
    recall = recall_score(references, predictions, labels=[positive, 1 - positive], average=None, zero_division=0)
    return {"sensitivity": float(recall[0]), "specificity": float(recall[1])}


def _reliability(references: np.ndarray, scores: np.ndarray) -> dict[str, list]:
    """The reliability diagram's non-empty bins: mean top-label confidence, accuracy and image count per bin."""
    confidence = scores.max(axis=1)
    correct = (scores.argmax(axis=1) == references).astype(int)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=ECE_BINS, strategy="uniform")
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    counts = np.histogram(confidence, bins=edges)[0]
    return {
        "bins": ECE_BINS,
        "confidence": mean_confidence.tolist(),
        "accuracy": accuracy.tolist(),
        "count": counts[counts > 0].tolist(),
    }


def _intervals(references, predictions, scores, labels, resamples: int, seed: int) -> dict[str, list[float]]:
    """Percentile bootstrap 95% intervals over images (scipy), for the metrics a reader compares models on.
    Stratified by class (each class's images resampled among themselves, as pROC does for AUROC): every resample
    holds every class, so AUROC is defined in all of them (unstratified, a rare class missing from a single
    resample made the whole interval NaN)."""
    by_class = [np.flatnonzero(references == label) for label in np.unique(references)]
    statistics = {
        "balanced_accuracy": lambda rows: balanced_accuracy_score(references[rows], predictions[rows]),
        "auroc": lambda rows: _auroc(references[rows], scores[rows], labels),
    }
    intervals = {}
    for name, statistic in statistics.items():
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's warnings on a metric the data leaves undefined
            found = bootstrap(
                by_class,  # independent samples: scipy resamples each one within itself
                lambda *rows, statistic=statistic: statistic(np.concatenate(rows)),
                n_resamples=resamples,
                method="percentile",
                paired=False,
                vectorized=False,
                random_state=np.random.default_rng(seed),
            ).confidence_interval
        intervals[name] = [float(found.low), float(found.high)]
    return intervals


def _auroc(references: np.ndarray, scores: np.ndarray, labels: list[int]) -> float:
    if len(np.unique(references)) < len(labels):
        return float("nan")
    if len(labels) == 2:
        return float(roc_auc_score(references, scores[:, 1]))
    scores = scores / scores.sum(axis=1, keepdims=True)
    return float(roc_auc_score(references, scores, multi_class="ovr", average="macro", labels=labels))
