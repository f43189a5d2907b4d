"""Class-weighted cross-entropy for imbalanced medical datasets (`--class_weights auto`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """w_c = N / (K · n_c): every class contributes equally to the loss, and the mean weight per training image is
    1, so the loss keeps its scale (and the learning rate its meaning)."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    return torch.tensor(counts.sum() / (num_classes * counts), dtype=torch.float32)


def weighted_cross_entropy(weights: torch.Tensor) -> Callable:
    """A Trainer `compute_loss_func`: the sum of weighted losses over the number of images in the whole
    (gradient-accumulated) batch, as the Trainer expects of a custom loss."""

    def loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["logits"].float()
        total = functional.cross_entropy(logits, labels, weight=weights.to(logits.device), reduction="sum")
        return total / (labels.numel() if num_items_in_batch is None else num_items_in_batch)

    return loss
