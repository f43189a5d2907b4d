"""Accuracy, balanced accuracy, macro F1 and AUROC for (possibly imbalanced) medical image classification.

An `evaluate` metric module computed with scikit-learn, so it loads offline:
`evaluate.load("path/to/medical_classification")` (the Hub's own metrics need a download).
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

_DESCRIPTION = """
Balanced accuracy and macro F1 weigh every class equally, which matters when the disease class is rare.
AUROC uses the predicted class probabilities (`prediction_scores`): binary, the positive class (label 1);
multi-class, one-vs-rest macro average. It is NaN when a class is absent from the references.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): true class ids.
    prediction_scores (`list[list[float]]`): class probabilities, one row per example.
    num_classes (`int`, optional): number of classes (default: the width of `prediction_scores`).
    per_class (`bool`, optional): also return per-class precision/recall/F1 and the confusion matrix.
Returns:
    accuracy, balanced_accuracy, macro_f1, auroc (floats) [, per_class, confusion_matrix].
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
                    "prediction_scores": datasets.Sequence(datasets.Value("float32")),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"],
        )

    def _compute(self, predictions, references, prediction_scores, num_classes=None, per_class=False):
        scores = np.asarray(prediction_scores, dtype=np.float64)
        num_classes = num_classes or scores.shape[1]
        labels = list(range(num_classes))
        result = {
            "accuracy": float(accuracy_score(references, predictions)),
            "balanced_accuracy": float(balanced_accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
            "auroc": _auroc(np.asarray(references), scores, labels),
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
        return result


def _auroc(references: np.ndarray, scores: np.ndarray, labels: list[int]) -> float:
    if len(np.unique(references)) < len(labels):
        return float("nan")
    if len(labels) == 2:
        return float(roc_auc_score(references, scores[:, 1]))
    scores = scores / scores.sum(axis=1, keepdims=True)
    return float(roc_auc_score(references, scores, multi_class="ovr", average="macro", labels=labels))
