"""The mutual-learning losses against the formulas of METHODS.md §3–5, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.losses import (
    js_divergence,
    mutual_kl,
    pooled_embedding,
    probability_distance,
    topology_loss,
)

LN2 = math.log(2.0)
LN3 = math.log(3.0)

# Two samples, two classes. Row 0: p1 = [1/4, 3/4]; row 1: p1 = [3/4, 1/4]. p2 = [1/2, 1/2].
Z1 = torch.tensor([[0.0, LN3], [LN3, 0.0]])
Z2 = torch.zeros(2, 2)


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_mutual_kl_is_kl_of_detached_peer_to_self_batchmean():
    # KL(p2 ‖ p1) per row = ½ ln(½ / ¼) + ½ ln(½ / ¾) = ½ ln(4/3) for both rows; batchmean keeps
    # it (a "mean" reduction would halve it again by the number of classes).
    expected = 0.5 * math.log(4 / 3)
    assert mutual_kl(Z1, Z2).item() == pytest.approx(expected, abs=1e-6)
    # The other direction is a different number: the target really is the peer.
    reverse = 0.5 * (_kl([0.25, 0.75], [0.5, 0.5]) + _kl([0.75, 0.25], [0.5, 0.5]))
    assert mutual_kl(Z2, Z1).item() == pytest.approx(reverse, abs=1e-6)
    assert reverse != pytest.approx(expected, abs=1e-3)


def test_mutual_kl_temperature_divides_the_logits_without_t_squared():
    # z / T with T = 2 gives back the same distributions as above: no T² factor in DML's term.
    assert mutual_kl(2 * Z1, 2 * Z2, temperature=2.0).item() == pytest.approx(
        0.5 * math.log(4 / 3), abs=1e-6
    )
    with pytest.raises(ValueError, match="temperature"):
        mutual_kl(Z1, Z2, temperature=0.0)


def test_mutual_kl_sends_no_gradient_to_the_peer():
    z1 = Z1.clone().requires_grad_(True)
    z2 = Z2.clone().requires_grad_(True)
    mutual_kl(z1, z2).backward()
    assert z2.grad is None
    assert z1.grad is not None and z1.grad.abs().sum() > 0


def test_js_divergence_hand_value_symmetry_and_bounds():
    p, q = [0.25, 0.75], [0.5, 0.5]
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    expected = 0.5 * _kl(p, m) + 0.5 * _kl(q, m)
    z1, z2 = Z1[:1], Z2[:1]
    assert js_divergence(z1, z2).item() == pytest.approx(expected, abs=1e-6)
    assert js_divergence(z2, z1).item() == pytest.approx(expected, abs=1e-6)  # symmetric
    torch.manual_seed(0)
    a, b = torch.randn(64, 10) * 3, torch.randn(64, 10) * 3
    assert js_divergence(a, b).item() == pytest.approx(js_divergence(b, a).item(), abs=1e-6)
    assert js_divergence(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < js_divergence(a, b).item() <= LN2
    # Disjoint (one-hot-like) distributions reach the bound ln 2.
    hot = torch.tensor([[60.0, 0.0, 0.0], [0.0, 60.0, 0.0]])
    other = torch.tensor([[0.0, 60.0, 0.0], [0.0, 0.0, 60.0]])
    assert js_divergence(hot, other).item() == pytest.approx(LN2, abs=1e-6)


def test_js_divergence_gradient_reaches_the_first_argument_only():
    z1 = Z1.clone().requires_grad_(True)
    z2 = Z2.clone().requires_grad_(True)
    js_divergence(z1, z2).backward()
    assert z2.grad is None
    assert z1.grad.abs().sum() > 0


def test_probability_distance_each_kind_by_hand():
    p, q = [0.25, 0.75], [0.5, 0.5]
    z1, z2 = Z1[:1], Z2[:1]
    assert probability_distance(z1, z2, "l1").item() == pytest.approx(0.5, abs=1e-6)
    assert probability_distance(z1, z2, "l2").item() == pytest.approx(0.125, abs=1e-6)
    assert probability_distance(z1, z2, "kl").item() == pytest.approx(_kl(q, p), abs=1e-6)
    m = [0.375, 0.625]
    js = 0.5 * _kl(p, m) + 0.5 * _kl(q, m)
    assert probability_distance(z1, z2, "js").item() == pytest.approx(js, abs=1e-6)
    with pytest.raises(ValueError, match="unknown divergence 'cos'"):
        probability_distance(z1, z2, "cos")


# -- topology --------------------------------------------------------------------------------


def _unit(angle):
    return [math.cos(angle), math.sin(angle)]


def _hand_topology(h, h_peer, neighbours, tau):
    """mean_i KL(q_peer(·|i) ‖ q(·|i)), q(j|i) = softmax_j(cos(h_i, h_j)/τ) over neighbours[i]."""

    def q(emb, i):
        dot = [sum(a * b for a, b in zip(emb[i], emb[j], strict=True)) for j in neighbours[i]]
        logits = [v / tau for v in dot]
        top = max(logits)
        e = [math.exp(v - top) for v in logits]
        return [v / sum(e) for v in e]

    return sum(_kl(q(h_peer, i), q(h, i)) for i in range(len(h))) / len(h)


def test_topology_loss_matches_the_formula_by_hand_with_knn():
    # Four unit vectors; in the peer's embedding sample 0's two nearest are 1 and 2, etc.
    peer_angles = [0.0, 0.3, 0.7, 2.5]
    own_angles = [0.0, 0.9, 0.4, 2.0]
    h_peer = [_unit(a) for a in peer_angles]
    h = [_unit(a) for a in own_angles]
    # K = 2 nearest others of each anchor by angle distance in the *peer's* embedding.
    neighbours = []
    for i, a in enumerate(peer_angles):
        others = sorted((abs(a - b), j) for j, b in enumerate(peer_angles) if j != i)
        neighbours.append([j for _, j in others[:2]])
    tau = 0.5
    expected = _hand_topology(h, h_peer, neighbours, tau)
    # Scaling an embedding changes nothing: it is L2-normalised inside.
    got = topology_loss(3 * torch.tensor(h), torch.tensor(h_peer), k=2, tau=tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0.01


def _nearest(angles, k):
    """The k nearest others of every anchor by angle (cosine order for angles in [0, π])."""
    result = []
    for i, a in enumerate(angles):
        others = sorted((abs(a - b), j) for j, b in enumerate(angles) if j != i)
        result.append([j for _, j in others[:k]])
    return result


def test_topology_neighbours_are_chosen_in_the_peers_embedding_not_the_networks_own():
    # The two embeddings order the samples differently: in the peer's, sample 0's two nearest
    # are 1 and 2; in the network's own, 3 and 2. Every anchor's set differs.
    peer_angles = [0.0, 0.3, 0.7, 2.5]
    own_angles = [0.0, 3.0, 2.5, 0.2]
    by_peer, by_own = _nearest(peer_angles, 2), _nearest(own_angles, 2)
    assert by_peer == [[1, 2], [0, 2], [1, 0], [2, 1]]
    assert by_own == [[3, 2], [2, 3], [1, 3], [0, 2]]
    h_peer = [_unit(a) for a in peer_angles]
    h = [_unit(a) for a in own_angles]
    tau = 0.5
    expected = _hand_topology(h, h_peer, by_peer, tau)
    wrong = _hand_topology(h, h_peer, by_own, tau)
    assert wrong - expected > 0.5  # the example (0.527 against 1.320) tells the two choices apart
    got = topology_loss(torch.tensor(h), torch.tensor(h_peer), k=2, tau=tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_topology_loss_zero_for_equal_embeddings_positive_otherwise():
    torch.manual_seed(0)
    a, b = torch.randn(32, 16), torch.randn(32, 16)
    for sampling in ("knn", "random"):
        assert topology_loss(a, a, k=8, sampling=sampling).item() == pytest.approx(0, abs=1e-6)
        assert topology_loss(a, b, k=8, sampling=sampling).item() > 0.05
    # Different widths are fine: only the B×B similarities are compared.
    assert topology_loss(a, torch.randn(32, 5), k=4).item() > 0


def test_topology_loss_random_sampling_uses_distinct_others():
    torch.manual_seed(0)
    h = torch.randn(5, 3)
    # K = B − 1 random others = every other sample: the same set as knn, so the same loss.
    peer = torch.randn(5, 3)
    generator = torch.Generator().manual_seed(1)
    random = topology_loss(h, peer, k=4, sampling="random", generator=generator)
    assert random.item() == pytest.approx(topology_loss(h, peer, k=4).item(), rel=1e-5)


def test_topology_loss_gradient_reaches_the_first_embedding_only():
    torch.manual_seed(0)
    a = torch.randn(16, 8, requires_grad=True)
    b = torch.randn(16, 8, requires_grad=True)
    topology_loss(a, b, k=4).backward()
    assert b.grad is None
    assert a.grad.abs().sum() > 0


def test_topology_loss_clear_errors():
    a = torch.randn(8, 4)
    with pytest.raises(ValueError, match=r"K=8 needs 1 ≤ K < batch size \(8\)"):
        topology_loss(a, a, k=8)
    with pytest.raises(ValueError, match="K=0"):
        topology_loss(a, a, k=0)
    with pytest.raises(ValueError, match="unknown sampling strategy 'nearest'"):
        topology_loss(a, a, k=2, sampling="nearest")
    with pytest.raises(ValueError, match="tau must be > 0"):
        topology_loss(a, a, k=2, tau=0.0)
    with pytest.raises(ValueError, match="same batch size"):
        topology_loss(a, a[:4], k=2)


def test_pooled_embedding_is_unit_length_mean_of_the_map():
    f = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    h = pooled_embedding(f)
    expected = torch.nn.functional.normalize(f.mean(dim=(2, 3)), dim=1)
    assert torch.allclose(h, expected)
    assert torch.allclose(h.norm(dim=1), torch.ones(2))
