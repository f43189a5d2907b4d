"""The clinical metrics (calibration, intervals, sensitivity/specificity, the validation-chosen threshold) and the
training options for imbalanced data, each against an independent computation."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from scipy.special import softmax
from test_train import train

from medft_hf.losses import inverse_frequency_weights, weighted_cross_entropy
from medft_hf.metrics import balanced_accuracy_standard_error, compute_classification_metrics, youden_threshold


def random_predictions(num_classes: int, count: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits that are informative but miscalibrated (too confident), and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=count)
    logits = rng.normal(size=(count, num_classes)) * 2.0
    logits[np.arange(count), labels] += 1.5
    return logits, labels


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


@pytest.mark.parametrize("num_classes", [2, 4])
def test_calibration_matches_an_independent_computation(num_classes):
    logits, labels = random_predictions(num_classes)
    probabilities = softmax(logits, axis=1)
    result = compute_classification_metrics(logits, labels, per_class=True)
    assert result["ece"] == pytest.approx(expected_calibration_error(probabilities, labels), abs=1e-6)
    one_hot = np.eye(num_classes)[labels]
    brier = (
        np.mean((probabilities[:, 1] - labels) ** 2)
        if num_classes == 2
        else np.mean(((probabilities - one_hot) ** 2).sum(axis=1))
    )
    assert result["brier"] == pytest.approx(brier, rel=1e-9)
    reliability = result["reliability"]
    assert sum(reliability["count"]) == len(labels)
    assert len(reliability["count"]) == len(reliability["accuracy"]) == len(reliability["confidence"])


@pytest.mark.parametrize("positive", [0, 1])
def test_sensitivity_and_specificity_at_the_argmax_and_at_a_threshold(positive):
    logits, labels = random_predictions(2, seed=1)
    probabilities = softmax(logits, axis=1)
    result = compute_classification_metrics(logits, labels, positive_label=positive, threshold=0.7)

    def rates(predicted: np.ndarray) -> tuple[float, float]:
        is_positive = labels == positive
        return (predicted[is_positive] == positive).mean(), (predicted[~is_positive] != positive).mean()

    argmax = probabilities.argmax(axis=1)
    assert (result["sensitivity"], result["specificity"]) == pytest.approx(rates(argmax))
    at_threshold = np.where(probabilities[:, positive] >= 0.7, positive, 1 - positive)
    assert result["at_threshold"]["threshold"] == 0.7
    assert (result["at_threshold"]["sensitivity"], result["at_threshold"]["specificity"]) == pytest.approx(
        rates(at_threshold)
    )
    assert "sensitivity" not in compute_classification_metrics(*random_predictions(3))


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    logits, labels = random_predictions(2, count=200, seed=2)
    score = softmax(logits, axis=1)[:, 1]
    best = max(
        np.unique(score),
        key=lambda t: (
            ((score >= t) & (labels == 1)).sum() / (labels == 1).sum()
            + ((score < t) & (labels == 0)).sum() / (labels == 0).sum()
        ),
    )
    assert youden_threshold(logits, labels, positive_label=1) == pytest.approx(best)


def test_the_balanced_accuracy_standard_error_is_the_spread_of_repeated_validations():
    """Validation sets drawn again and again with the same class sizes, each class's images correct with the
    (smoothed) recall of one confusion matrix: the standard deviation of their balanced accuracies is the standard
    error computed from that matrix."""
    # class 2 has no images: left out, as the balanced accuracy leaves it out
    confusion = [[131, 4, 0, 0], [6, 40, 0, 4], [0, 0, 0, 0], [2, 3, 0, 25]]
    counts = np.array([135, 50, 30])
    recalls = (np.array([131, 40, 25]) + 1) / (counts + 2)
    repeated = (np.random.default_rng(0).binomial(counts, recalls, size=(200_000, 3)) / counts).mean(axis=1)
    assert balanced_accuracy_standard_error(confusion) == pytest.approx(repeated.std(), rel=0.01)
    # a perfect score on 2 x 30 images still has an error, of the order of one image (1/60 of the score)
    assert 1 / 60 < balanced_accuracy_standard_error([[30, 0], [0, 30]]) < 2 / 60


def test_bootstrap_intervals_match_an_independent_percentile_bootstrap():
    logits, labels = random_predictions(3, count=300, seed=3)
    result = compute_classification_metrics(logits, labels, bootstrap_resamples=2000, seed=0)
    predictions = logits.argmax(axis=1)
    rng = np.random.default_rng(123)
    resampled = []
    for _ in range(2000):  # stratified: each class's images resampled among themselves
        rows = np.concatenate([rng.choice(np.flatnonzero(labels == c), (labels == c).sum()) for c in range(3)])
        truth, guess = labels[rows], predictions[rows]
        resampled.append(np.mean([(guess[truth == c] == c).mean() for c in range(3)]))
    low, high = np.percentile(resampled, [2.5, 97.5])
    interval = result["intervals"]["balanced_accuracy"]
    assert interval[0] == pytest.approx(low, abs=0.015)
    assert interval[1] == pytest.approx(high, abs=0.015)
    for name in ("balanced_accuracy", "auroc"):
        assert result["intervals"][name][0] < result[name] < result["intervals"][name][1]


def test_auroc_interval_is_defined_when_the_positive_class_is_rare():
    """5 positives in 200: 1000 unstratified resamples hold one without a positive with probability 0.998
    (1 - (1 - 0.975**200)**1000), and that one resample made the whole interval NaN."""
    rng = np.random.default_rng(0)
    labels = np.array([1] * 5 + [0] * 195)
    logits = np.stack([np.zeros(200), 2.0 * labels + rng.normal(size=200)], axis=1)
    result = compute_classification_metrics(logits, labels, bootstrap_resamples=1000, seed=0)
    low, high = result["intervals"]["auroc"]
    assert 0 <= low < result["auroc"] < high <= 1


def test_inverse_frequency_weights_and_the_weighted_loss():
    labels = np.array([0, 0, 0, 1])
    weights = inverse_frequency_weights(labels, 2)
    assert weights.tolist() == pytest.approx([4 / 6, 4 / 2])
    assert float(weights[torch.from_numpy(labels)].mean()) == pytest.approx(1.0), "mean weight per image is 1"
    logits = torch.randn(4, 2)
    loss = weighted_cross_entropy(weights)({"logits": logits}, torch.from_numpy(labels))
    log_probabilities = torch.log_softmax(logits, dim=1)
    manual = -sum(weights[y] * log_probabilities[i, y] for i, y in enumerate(labels)) / 4
    torch.testing.assert_close(loss, manual)


def test_a_binary_run_records_calibration_intervals_and_clinical_rates(tiny_model, tmp_path):
    results = train(
        tiny_model, None, tmp_path, "--strategy", "lp", "--num_train_epochs", "1", "--positive_class", "malignant",
        "--class_weights", "auto", "--bootstrap_resamples", "200",
    )  # fmt: skip
    test = json.loads((tmp_path / "results.json").read_text())["test"]
    assert results.positive_class == "malignant"
    assert {"ece", "brier", "sensitivity", "specificity", "at_threshold", "intervals", "reliability"} <= set(test)
    threshold = test["at_threshold"]["threshold"]
    assert 0 <= threshold <= 1
    assert results.validation["at_threshold"]["threshold"] == threshold, "chosen on validation, applied to test"
    matrix = np.asarray(test["confusion_matrix"])  # rows: true malignant (label 0), normal_or_benign
    assert test["sensitivity"] == pytest.approx(matrix[0, 0] / matrix[0].sum())
    assert test["specificity"] == pytest.approx(matrix[1, 1] / matrix[1].sum())
    assert (tmp_path / "reliability_diagram.png").is_file()


def test_early_stopping_restores_the_best_epoch(tiny_model, tiny_dataset, tmp_path):
    """A linear probe (BatchNorm statistics fixed) at a rate too small to change any prediction: validation never
    improves after epoch 1, so training stops 2 epochs later and epoch 1's model is restored."""
    results = train(
        tiny_model, tiny_dataset, tmp_path, "--strategy", "lp", "--learning_rate", "1e-12", "--num_train_epochs", "6",
        "--early_stopping_patience", "2",
    )  # fmt: skip
    assert len(results.history) == 3
    assert results.best_checkpoint.endswith("checkpoint-3"), "the first epoch's model is the one kept"
