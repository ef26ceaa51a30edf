"""Losses for imbalanced labels: BCE-with-logits (optional per-label ``pos_weight``), focal loss
(MONAI's), softmax cross-entropy for single-label data (optional class weights); and the knowledge
distillation term that pulls a model's outputs toward a teacher's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

#: a label with no positive in the training split would get an infinite weight
MAX_POS_WEIGHT = 100.0


def positive_weights(labels: np.ndarray) -> list[float]:
    """Per label, negatives / positives in ``labels`` (N, K), clipped to [1/MAX, MAX]."""
    labels = np.asarray(labels, dtype=np.float64)
    positives = labels.sum(axis=0)
    negatives = len(labels) - positives
    ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), MAX_POS_WEIGHT)
    return np.clip(ratio, 1.0 / MAX_POS_WEIGHT, MAX_POS_WEIGHT).tolist()


def class_weights(labels: np.ndarray) -> list[float]:
    """Balanced single-label class weights N / (K * count), from one-hot ``labels`` (N, K)."""
    counts = np.asarray(labels, dtype=np.float64).sum(axis=0)
    weights = len(labels) / (labels.shape[1] * np.maximum(counts, 1))
    return np.clip(weights, 1.0 / MAX_POS_WEIGHT, MAX_POS_WEIGHT).tolist()


def loss_name(requested: str, multi_label: bool) -> str:
    if requested == "auto":
        return "bce" if multi_label else "ce"
    return requested


def classification_loss(logits: torch.Tensor, target: torch.Tensor, name: str, multi_label: bool,
                        weights: Sequence[float] | None = None, focal_gamma: float = 2.0) -> torch.Tensor:
    """Mean loss of logits (B, K) against multi-hot or one-hot targets (B, K), in float32.

    ``weights``: per-label positive weights (bce) or per-class weights (ce, focal); None = equal.
    """
    logits, target = logits.float(), target.float()
    weight = logits.new_tensor(list(weights)) if weights is not None else None
    if name == "bce":
        return nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
    if name == "ce":
        return nn.functional.cross_entropy(logits, target.argmax(dim=1), weight=weight)
    if name == "focal":
        from monai.losses import FocalLoss

        focal = FocalLoss(use_softmax=not multi_label, gamma=focal_gamma, weight=weight, reduction="mean")
        return focal(logits, target)
    raise ValueError(f"unknown loss {name!r}")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, multi_label: bool,
                      temperature: float = 2.0) -> torch.Tensor:
    """How far the student's outputs lie from the teacher's, both logits (B, K), softened by ``temperature``
    and scaled by its square (Hinton et al. 2015), in float32; 0 when the two agree.

    Single-label: KL(softmax(teacher / T) || softmax(student / T)), per picture. Multi-label: per label, the
    KL divergence between the two Bernoulli distributions sigmoid(teacher / T) and sigmoid(student / T), i.e.
    BCE-with-logits against the teacher's probabilities less that target's own entropy (same gradient).
    """
    student, teacher = student_logits.float() / temperature, teacher_logits.float() / temperature
    if multi_label:
        target = torch.sigmoid(teacher)
        divergence = (nn.functional.binary_cross_entropy_with_logits(student, target)
                      - nn.functional.binary_cross_entropy_with_logits(teacher, target))
    else:
        divergence = nn.functional.kl_div(nn.functional.log_softmax(student, dim=1),
                                          nn.functional.log_softmax(teacher, dim=1), reduction="batchmean",
                                          log_target=True)
    return divergence * temperature ** 2
