"""AUROC and balanced accuracy beside accuracy, for a two-class unbalanced task (MSI vs MSS),
worked by hand on ten test tiles where plain accuracy prefers the useless network."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlab.metrics import auroc, balanced_accuracy
from kdlab.tasks.classification import Classification

# Class 0 is the positive, rare class (MSIMUT comes first, as in the MSI data sets); 2 of 10.
LABELS = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
# Each network's probability of class 0, tile by tile.
MAJORITY = [0.40, 0.30, 0.10, 0.20, 0.20, 0.35, 0.05, 0.15, 0.25, 0.45]  # always "1" (MSS)
USEFUL = [0.90, 0.62, 0.10, 0.70, 0.20, 0.55, 0.05, 0.65, 0.25, 0.49]  # both found, 3 false


class ByIndex(nn.Module):
    """A network whose logits for tile i are log(p_i), log(1 − p_i): x holds the index."""

    def __init__(self, p0):
        super().__init__()
        p = torch.tensor(p0)
        self.register_buffer("z", torch.stack([p.log(), (1 - p).log()], 1))

    def forward(self, x):
        return self.z[x[:, 0, 0, 0].long()]


def _pairs_auroc(p0, labels):
    """By hand: the share of (positive, negative) pairs whose positive scores higher."""
    pos = [p for p, y in zip(p0, labels.tolist()) if y == 0]
    neg = [p for p, y in zip(p0, labels.tolist()) if y == 1]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def _evaluate(**task):
    x = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    batches = [(x[:6], LABELS[:6]), (x[6:], LABELS[6:])]  # two batches: the metric is global
    nets = {"majority": ByIndex(MAJORITY), "useful": ByIndex(USEFUL)}
    return Classification(**task).evaluate(nets, batches, ensemble=("majority", "useful"))


def test_plain_accuracy_misleads_and_the_other_two_do_not():
    """The majority network: accuracy 80 %, balanced accuracy 50 % (recall 0 and 1), AUROC
    13/16 (0.40 beats 7 of the 8 negatives, 0.30 beats 6). The useful one: accuracy 70 %,
    balanced accuracy (2/2 + 5/8) / 2 = 81.25 %, AUROC 14/16."""
    record = _evaluate(extra_metrics=("auroc", "balanced_acc"), positive=0)
    assert record["acc/majority"] == pytest.approx(80.0)
    assert record["acc/useful"] == pytest.approx(70.0)
    assert record["balanced_acc/majority"] == pytest.approx(50.0)
    assert record["balanced_acc/useful"] == pytest.approx(81.25)
    assert record["auroc/majority"] == pytest.approx(13 / 16)
    assert record["auroc/useful"] == pytest.approx(14 / 16)
    assert _pairs_auroc(MAJORITY, LABELS) == 13 / 16 and _pairs_auroc(USEFUL, LABELS) == 14 / 16
    # The ensemble: the mean of the two softmax outputs (no ties), scored the same way: its
    # positives 0.65 and 0.46 against negatives up to 0.47: 15/16; predictions 0 on tile 0 only.
    mean = [(a + b) / 2 for a, b in zip(MAJORITY, USEFUL)]
    assert record["auroc/ensemble"] == pytest.approx(_pairs_auroc(mean, LABELS)) == 15 / 16
    assert record["balanced_acc/ensemble"] == pytest.approx(75.0)
    predicted = [0 if p > 0.5 else 1 for p in mean]
    recalls = [
        sum(p == y == c for p, y in zip(predicted, LABELS.tolist())) / (LABELS == c).sum().item()
        for c in (0, 1)
    ]
    assert record["balanced_acc/ensemble"] == pytest.approx(100 * sum(recalls) / 2)


def test_auroc_ranks_by_the_positive_class():
    """Ranking by the other class's probability against these labels gives 1 − AUROC."""
    probs = torch.stack([torch.tensor(USEFUL), 1 - torch.tensor(USEFUL)], 1)
    assert auroc(probs, LABELS, positive=0) == pytest.approx(14 / 16)
    assert auroc(probs, LABELS, positive=1) == pytest.approx(14 / 16)  # both sides swapped
    assert _pairs_auroc([1 - p for p in USEFUL], LABELS) == pytest.approx(2 / 16)


def test_multiclass_auroc_is_the_mean_one_vs_rest():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 1, 2, 1])
    by_hand = []
    for c in range(3):
        scores = probs[:, c].tolist()
        flipped = [0 if y == c else 1 for y in labels.tolist()]
        by_hand.append(_pairs_auroc(scores, torch.tensor(flipped)))
    assert auroc(probs, labels) == pytest.approx(sum(by_hand) / 3)
    assert balanced_accuracy(probs.argmax(1), labels, 3) == pytest.approx(100 * (1 + 0.5 + 1) / 3)


def test_without_extras_the_record_is_accuracy_alone():
    record = _evaluate()
    assert not any(k.startswith(("auroc/", "balanced_acc/")) for k in record)
    assert Classification().metrics == ("acc",)
    task = Classification(extra_metrics=("auroc", "balanced_acc"), positive=0)
    assert task.metrics == ("acc", "auroc", "balanced_acc")
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        Classification(extra_metrics=("f1",))
    assert math.isfinite(_evaluate(extra_metrics=("auroc",), positive=0)["auroc/ensemble"])
