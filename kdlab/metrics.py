"""Metrics as pure functions of tensors, shared by the tasks, and the statistics over seeds.

- :func:`ensemble_probabilities`: an ensemble's prediction, the mean of its members' softmax;
- :func:`pairwise_js`: the Jensen–Shannon divergence between two batches of distributions;
- :func:`auroc` and :func:`balanced_accuracy`: the metrics of an unbalanced task, where plain
  accuracy rewards predicting the majority class (torchmetrics);
- :func:`summarize`: mean, sample standard deviation and n of a list of results.

How a network is evaluated on a test split is its data set's task's (:mod:`kdlab.tasks`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["auroc", "balanced_accuracy", "ensemble_probabilities", "pairwise_js", "summarize"]


def ensemble_probabilities(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ensemble's prediction: the mean of the members' softmax outputs (B×C)."""
    return torch.stack([F.softmax(z.float(), dim=1) for z in logits]).mean(0)


def pairwise_js(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-sample ``JS(p, q)`` between two batches of probability vectors (natural log)."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        return torch.xlogy(a, a).sum(1) - (a * m.clamp_min(1e-30).log()).sum(1)

    return (0.5 * (kl(p) + kl(q))).clamp_min(0.0)


def auroc(probabilities: torch.Tensor, labels: torch.Tensor, positive: int = 1) -> float:
    """The area under the ROC curve, in [0, 1] (0.5: chance; not a percentage).

    ``probabilities`` N×C (softmax outputs), ``labels`` N class indices. Two classes: the
    probability of the class ``positive`` ranks the samples against the labels ``y ==
    positive`` (torchmetrics' ``binary_auroc``, exact, no thresholds): the fraction of
    (positive, negative) pairs ranked in the right order, ties counting ½. More classes: the
    mean of the one-vs-rest AUROCs (``multiclass_auroc``, ``average="macro"``).
    """
    from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

    probabilities, labels = probabilities.float(), labels.long()
    classes = probabilities.shape[1]
    if classes == 2:
        return binary_auroc(probabilities[:, positive], (labels == positive).long()).item()
    return multiclass_auroc(probabilities, labels, num_classes=classes, average="macro").item()


def balanced_accuracy(predictions: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """The mean over the classes of each class's recall (its share of correct predictions), in
    percent: 50 % for a two-class predictor that always says the majority class, whatever the
    imbalance. torchmetrics' ``multiclass_accuracy`` with ``average="macro"``; ``predictions``
    and ``labels`` are N class indices."""
    from torchmetrics.functional.classification import multiclass_accuracy

    value = multiclass_accuracy(predictions, labels, num_classes=classes, average="macro")
    return 100 * value.item()


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and n."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}
