"""The reported test metrics (METHODS.md, "Metrics") on fixed outputs, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlab.metrics import ensemble_probabilities, pairwise_js, summarize
from kdlab.tasks.classification import evaluate

LN2 = math.log(2.0)


class FixedLogits(nn.Module):
    """A "network" whose logits are a fixed B×C tensor (the input is ignored)."""

    def __init__(self, logits) -> None:
        super().__init__()
        self.z = nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.z * 1.0


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _js(p, q):
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


def _logits(*probs):
    return [[math.log(v) for v in p] for p in probs]


# -- the ensemble: the mean of the softmax outputs ------------------------------------------------

# Network a is sure of class 1 with large logits; b and c lean to class 0 with small ones.
# Mean softmax: class 0 = (0.00005 + 2 · 0.9526) / 3 = 0.635 → class 0, the label.
# Mean logits: [2, 3.33] → class 1. (A majority vote would also say 0; the logits are the trap.)
ZA, ZB, ZC = [[0.0, 10.0]], [[3.0, 0.0]], [[3.0, 0.0]]


def test_ensemble_probabilities_average_the_softmax_outputs_not_the_logits():
    got = ensemble_probabilities([torch.tensor(z) for z in (ZA, ZB, ZC)])
    sa = 1 / (1 + math.exp(10.0))  # softmax([0, 10])[0]
    sb = 1 / (1 + math.exp(-3.0))  # softmax([3, 0])[0]
    expected = (sa + 2 * sb) / 3
    assert got[0, 0].item() == pytest.approx(expected, rel=1e-5)
    assert got.sum(1).tolist() == pytest.approx([1.0])


def test_reported_ensemble_accuracy_comes_from_the_mean_softmax():
    nets = {"a": FixedLogits(ZA), "b": FixedLogits(ZB), "c": FixedLogits(ZC)}
    batches = [(torch.zeros(1, 1), torch.tensor([0]))]
    metrics = evaluate(nets, batches, ensemble=["a", "b", "c"])
    assert metrics["acc/a"] == 0 and metrics["acc/b"] == 100 and metrics["acc/c"] == 100
    assert metrics["acc/ensemble"] == 100  # averaging the logits would give 0


# -- agreement and JS between ensemble members ----------------------------------------------------

# Two samples. Sample 1: p_a = [1/4, 3/4], p_b = [3/5, 2/5] (they disagree); sample 2: both
# [3/4, 1/4] (they agree, JS 0).
PA = [[0.25, 0.75], [0.75, 0.25]]
PB = [[0.6, 0.4], [0.75, 0.25]]


def test_reported_js_is_the_batch_mean_of_jensen_shannon_in_nats():
    nets = {"a": FixedLogits(_logits(*PA)), "b": FixedLogits(_logits(*PB))}
    batches = [(torch.zeros(2, 1), torch.tensor([1, 0]))]
    metrics = evaluate(nets, batches, ensemble=["a", "b"])
    expected = _js(PA[0], PB[0]) / 2  # sample 2 adds 0: 0.0321
    assert metrics["js/a-b"] == pytest.approx(expected, rel=1e-5)
    # The plausible slips give other numbers: KL(p_a ‖ p_b) / 2 = 0.126, KL(p_b ‖ p_a) / 2, ½ JS.
    for wrong in (_kl(PA[0], PB[0]) / 2, _kl(PB[0], PA[0]) / 2, expected / 2):
        assert abs(wrong - expected) > 0.01
    assert metrics["agree/a-b"] == 50
    assert metrics["acc/a"] == 100 and metrics["acc/b"] == 50


def test_pairwise_js_by_hand_symmetric_and_at_most_ln2():
    p, q = torch.tensor(PA), torch.tensor(PB)
    assert pairwise_js(p, q).tolist() == pytest.approx([_js(PA[0], PB[0]), 0.0], abs=1e-6)
    assert pairwise_js(q, p).tolist() == pytest.approx(pairwise_js(p, q).tolist(), abs=1e-7)
    # Disjoint supports reach the bound: JS = ln 2 (KL would be infinite there).
    hot = torch.tensor([[1.0, 0.0, 0.0]])
    other = torch.tensor([[0.0, 0.0, 1.0]])
    assert pairwise_js(hot, other).item() == pytest.approx(LN2, abs=1e-6)


def test_summarize_uses_the_sample_standard_deviation():
    # Values 1, 2, 3, 6: mean 3; squared deviations 4 + 1 + 0 + 9 = 14; 14 / (n − 1) = 14 / 3.
    got = summarize([1.0, 2.0, 3.0, 6.0])
    assert got["mean"] == pytest.approx(3.0)
    assert got["std"] == pytest.approx(math.sqrt(14 / 3))  # the population std would be √3.5
    assert got["n"] == 4
    assert summarize([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}
