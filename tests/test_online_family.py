"""The online-distillation family (METHODS.md §11): ONE, CL-ILR, OKDDip, KDCL and PCL, each
against numbers worked by hand, where the plausible wrong choice gives a different number."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import kdlab
from kdlab.methods.base import rampup_weight
from kdlab.methods.cl_ilr import others_mean
from kdlab.methods.kdcl import build_teacher, linear_weights
from kdlab.methods.one import gated_logits
from kdlab.methods.pcl import ema_decay
from kdlab.models import build_model
from kdlab.optim import build_optimizers

T = 3.0


def _kl(target_logits, logits, t=T):
    """``T² · KL(softmax(target/T) ‖ softmax(z/T))``, batchmean, written out."""
    p = torch.softmax(target_logits / t, 1)
    q = torch.softmax(logits / t, 1)
    return t * t * (p * (p.log() - q.log())).sum(1).mean()


def _capture(store: dict, optimizer=None):
    """An ``update`` that records the terms (and steps ``optimizer`` on their sum)."""

    def update(terms, also_step=()):
        store.update({n: dict(d) for n, d in terms.items()}, also_step=tuple(also_step))
        if optimizer is not None:
            optimizer.zero_grad()
            sum(v for d in terms.values() for v in d.values()).backward()
            optimizer.step()

    return update


def _method(name, arch, **params):
    torch.manual_seed(0)
    return kdlab.get_method(name)({"net1": build_model(arch, 10, 1)}, **params)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 1, 8, 8, generator=g), torch.arange(6) % 10


# ----------------------------------------------------------------------------- ramp-up


def test_rampup_at_epochs_1_40_80():
    """Epoch 1 is the authors' epoch 0: w = e⁻⁵. Counting from 1 instead gives 0.0076 at
    epoch 1 and 1.0 at 80; the PCL reproduction's ramp (λ = 1) gives ≈ 0 at 40."""
    assert rampup_weight(1) == pytest.approx(math.exp(-5)) == pytest.approx(0.006738, abs=1e-6)
    assert rampup_weight(40) == pytest.approx(math.exp(-5 * (41 / 80) ** 2))
    assert rampup_weight(40) == pytest.approx(0.26894, abs=1e-5)
    assert rampup_weight(80) == pytest.approx(math.exp(-5 / 6400)) == pytest.approx(0.99922, 1e-5)
    assert rampup_weight(81) == rampup_weight(300) == 1.0
    assert rampup_weight(1, 0) == 1.0
    with pytest.raises(ValueError, match="rampup must be ≥ 0"):
        rampup_weight(1, -1)


# ----------------------------------------------------------------------------- ONE


def test_one_gate_is_a_softmax_over_the_branches(batch):
    """Every sample's gate weights sum to 1 over the m = 3 branches (B = 6, C = 10: a softmax
    over the batch or over classes would not), and z_e = Σ_i g_i z_i."""
    x, _ = batch
    method = _method("one", "cnn_tiny_branches3")
    logits, trunk, _ = method.net(x, return_features=True)
    gate = method.networks["gate"]
    g = gate(trunk)
    assert g.shape == (6, 3)
    assert torch.allclose(g.sum(1), torch.ones(6), atol=1e-6)
    scores = F.relu(gate.bn(gate.fc(trunk.mean((2, 3)))))  # BN in training mode: batch stats
    by_hand = torch.exp(scores) / torch.exp(scores).sum(1, keepdim=True)
    assert torch.allclose(g, by_hand, atol=1e-6)
    z_e = sum(by_hand[:, i : i + 1] * logits[:, i] for i in range(3))
    assert torch.allclose(gated_logits(logits, g), z_e, atol=1e-5)


def test_one_loss_by_hand_with_t_squared_and_the_ramp(batch):
    x, y = batch
    method = _method("one", "cnn_tiny_branches3")
    terms = {}
    method.training_step(x, y, _capture(terms), epoch=40)
    assert terms["also_step"] == ("gate",)
    with torch.no_grad():
        logits, trunk, _ = method.net(x, return_features=True)
        z_e = gated_logits(logits, method.networks["gate"](trunk))
    got = terms["net1"]
    branches = logits.unbind(1)
    assert got["ce"].item() == pytest.approx(sum(F.cross_entropy(z, y) for z in branches).item())
    assert got["ce_teacher"].item() == pytest.approx(F.cross_entropy(z_e, y).item(), rel=1e-5)
    kd = rampup_weight(40) * sum(_kl(z_e, z) for z in branches)
    assert got["kd"].item() == pytest.approx(kd.item(), rel=1e-4)
    assert abs(got["kd"].item() - kd.item() / T**2) > 0.5 * kd.item()  # T² matters


def test_one_ensemble_is_a_detached_target(batch):
    """The KL terms train the branches only: no gradient reaches the gate through z_e."""
    x, y = batch
    method = _method("one", "cnn_tiny_branches3")
    terms = {}
    method.training_step(x, y, _capture(terms), epoch=81)
    gate = list(method.networks["gate"].parameters())
    grads = torch.autograd.grad(terms["net1"]["kd"], gate, allow_unused=True, retain_graph=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    grads = torch.autograd.grad(terms["net1"]["ce_teacher"], gate, allow_unused=True)
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in grads)


# ----------------------------------------------------------------------------- CL-ILR


def test_cl_targets_are_the_mean_of_the_other_branches():
    z = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]])  # B = 1, m = 3, C = 2
    expected = torch.tensor([[[4.0, 6.5], [3.0, 5.5], [2.0, 3.0]]])
    assert torch.equal(others_mean(z), expected)  # the mean over all three is (3, 5) for each


def test_cl_loss_by_hand(batch):
    x, y = batch
    method = _method("cl_ilr", "cnn_tiny_branches3", lam=0.5)
    terms = {}
    method.training_step(x, y, _capture(terms), epoch=40)
    with torch.no_grad():
        z = method.net(x).unbind(1)
    expected = sum(_kl((z[1] + z[2]) / 2, z[0]) + _kl((z[0] + z[2]) / 2, z[1])
                   + _kl((z[0] + z[1]) / 2, z[2]) for _ in [0])  # fmt: skip
    got = terms["net1"]["kd"].item()
    assert got == pytest.approx(0.5 * rampup_weight(40) * expected.item(), rel=1e-4)


def test_cl_divides_the_trunk_gradient_by_the_number_of_branches(batch):
    x, y = batch
    grads = {}
    for ilr in (True, False):
        method = _method("cl_ilr", "cnn_tiny_branches3", ilr=ilr)
        terms = {}
        method.training_step(x, y, _capture(terms), epoch=81)
        sum(terms["net1"].values()).backward()
        grads[ilr] = {n: p.grad for n, p in method.net.named_parameters()}
    assert _method("cl_ilr", "cnn_tiny_branches3").net.trunk_grad_scale == pytest.approx(1 / 3)
    for name, plain in grads[False].items():
        ratio = 1 / 3 if name.startswith("trunk.") else 1.0
        assert torch.allclose(grads[True][name], ratio * plain, rtol=1e-4, atol=1e-7), name


# ----------------------------------------------------------------------------- OKDDip


def test_okddip_targets_mix_detached_peers_with_trained_attention(batch):
    x, _ = batch
    method = _method("okddip", "cnn_tiny_branches4")
    logits, _, maps = method.net(x, return_features=True)
    targets = method.targets(logits, maps)
    h = torch.stack([f.mean((2, 3)) for f in maps[:3]], 1)
    attention = method.networks["attention"]
    a = torch.softmax(attention.query(h) @ attention.key(h).transpose(1, 2), -1)
    assert torch.allclose(a.sum(-1), torch.ones(6, 3), atol=1e-6)  # over the peers
    assert torch.allclose(targets, a @ logits[:, :3], atol=1e-5)
    branches = [p for b in method.net.branches for p in b.parameters()]
    trunk = list(method.net.trunk.parameters())
    grads = torch.autograd.grad(targets.sum(), branches + trunk, allow_unused=True,
                                retain_graph=True)  # fmt: skip
    assert all(g is None for g in grads), "a peer's target sent gradient into the network"
    grads = torch.autograd.grad(targets.sum() ** 2, list(attention.parameters()))
    assert all(torch.count_nonzero(g) > 0 for g in grads)


def test_okddip_loss_by_hand(batch):
    x, y = batch
    method = _method("okddip", "cnn_tiny_branches4", alpha=0.5)
    terms = {}
    method.training_step(x, y, _capture(terms), epoch=81)
    assert terms["also_step"] == ("attention",)
    with torch.no_grad():
        logits, _, maps = method.net(x, return_features=True)
        mixed = method.targets(logits, maps)
    peers, leader = logits[:, :3], logits[:, 3]
    expected = sum(_kl(mixed[:, i], peers[:, i]) for i in range(3)) + _kl(peers.mean(1), leader)
    assert terms["net1"]["kd"].item() == pytest.approx(0.5 * expected.item(), rel=1e-4)
    with_leader = sum(_kl(mixed[:, i], peers[:, i]) for i in range(3)) + _kl(logits.mean(1), leader)
    assert abs(with_leader.item() - expected.item()) > 1e-3  # the leader's target leaves it out
    ce = sum(F.cross_entropy(logits[:, i], y) for i in range(4))
    assert terms["net1"]["ce"].item() == pytest.approx(ce.item(), rel=1e-5)


# ----------------------------------------------------------------------------- KDCL


def test_kdcl_teachers_by_hand():
    z = torch.tensor([[[2.0, 0.0, 1.0]], [[1.0, 1.0, -1.0]]])  # N = 2 students, B = 1, C = 3
    y = torch.tensor([0])
    assert torch.equal(build_teacher(z, y, "naive"), torch.tensor([[1.5, 0.5, 0.0]]))
    # z − z[y]: (0, −2, −1) and (0, 0, −2); the minimum over the students: (0, −2, −2).
    assert torch.equal(build_teacher(z, y, "min_logit"), torch.tensor([[0.0, -2.0, -2.0]]))
    with pytest.raises(ValueError, match="unknown teacher 'vote'"):
        build_teacher(z, y, "vote")


def test_kdcl_linear_weights_favour_the_better_student():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(8) % 4
    good = F.one_hot(y, 4).float() * 3 + 0.1 * torch.randn(8, 4, generator=g)
    bad = torch.randn(8, 4, generator=g)
    z = torch.stack([bad, good])
    w = linear_weights(z, y)
    assert w.sum().item() == pytest.approx(1.0) and (w >= 0).all()
    assert w[1] > 0.8
    ce = F.cross_entropy(torch.einsum("n,nbc->bc", w, z), y)
    assert ce <= F.cross_entropy(z.mean(0), y)


def test_kdcl_every_student_sees_its_own_view(batch):
    x, y = batch
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = build_model("cnn_tiny", 10, 1)

        def forward(self, v):
            seen.append(v)
            return self.net(v)

    method = kdlab.get_method("kdcl")({f"student{i}": Spy() for i in (1, 2, 3)})
    assert method.views == 3
    views = (x, x + 1, x + 2)
    terms = {}
    method.training_step(views, y, _capture(terms), epoch=81)
    assert [v is view for v, view in zip(seen, views)] == [True] * 3
    with torch.no_grad():
        z = [s.net(v) for s, v in zip(method.networks.values(), views)]
    teacher = torch.stack(z).mean(0)
    for name, zi in zip(method.networks, z):
        assert terms[name]["kd"].item() == pytest.approx(_kl(teacher, zi).item(), rel=1e-4)
    assert (
        kdlab.get_method("kdcl")(
            {f"s{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2)}, augment_per_student=False
        ).views
        == 1
    )


def test_kdcl_trains_on_the_loaders_views(digits, fast_config):
    method = kdlab.get_method("kdcl")({f"s{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2)})
    kinds = []
    step = method.training_step

    def spying_step(x, y, update, **kw):
        kinds.append((type(x).__name__, len(x), x[0].shape[0] == y.shape[0]))
        return step(x, y, update, **kw)

    method.training_step = spying_step
    kdlab.fit(method, digits, fast_config, progress=False)
    assert set(kinds) == {("tuple", 2, True)}


# ----------------------------------------------------------------------------- PCL


def test_pcl_ema_decay_warm_up():
    assert [ema_decay(k, 0.999) for k in (0, 1, 9)] == [0.0, 0.5, 0.9]
    assert ema_decay(10_000, 0.999) == 0.999


def test_pcl_temporal_means_follow_the_stepped_weights(batch):
    """Update k (from 0) sets mean ← α·mean + (1 − α)·weights *after* the optimizer's step:
    the first copies the stepped weights (α = 0), the second averages (α = ½)."""
    x, y = batch
    method = _method("pcl", "cnn_tiny_branches3", augment_per_peer=False)
    optimizer = torch.optim.SGD(method.networks.parameters(), lr=0.5)
    before = [p.detach().clone() for p in method.net.parameters()]
    method.training_step(x, y, _capture({}, optimizer), epoch=81)
    first = [p.detach().clone() for p in method.net.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, first))  # the step moved them
    for mean_p, p in zip(method.mean.parameters(), first):
        assert torch.equal(mean_p, p)
    method.training_step(x, y, _capture({}, optimizer), epoch=81)
    for mean_p, p1, p2 in zip(method.mean.parameters(), first, method.net.parameters()):
        assert torch.allclose(mean_p, 0.5 * p1 + 0.5 * p2.detach(), atol=1e-6)
    assert int(method.ema_updates) == 2


def test_pcl_temporal_means_never_get_gradient(batch):
    x, y = batch
    method = _method("pcl", "cnn_tiny_branches3")
    assert not any(p.requires_grad for p in method.mean.parameters())
    terms = {}
    method.training_step(x, y, _capture(terms), epoch=81)
    sum(terms["net1"].values()).backward()
    assert all(p.grad is None for p in method.mean.parameters())
    config = kdlab.TrainConfig(device="cpu")
    optimizers, _ = build_optimizers(method, config, torch.device("cpu"))
    optimized = {id(p) for o in optimizers.values() for g in o.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in method.mean.parameters()}


def test_pcl_loss_by_hand(batch):
    x, y = batch
    method = _method("pcl", "cnn_tiny_branches3", augment_per_peer=False)
    means = copy.deepcopy(method.mean)
    terms = {}
    method.training_step(x, y, _capture(terms), epoch=40)
    assert terms["also_step"] == ("head",)
    with torch.no_grad():
        logits, _, maps = method.net(x, return_features=True)
        z_en = method.networks["head"](torch.cat([f.mean((2, 3)) for f in maps], 1))
        z_mean = means(x)  # the temporal means before this step's update
    z, w = logits.unbind(1), rampup_weight(40)
    got = terms["net1"]
    assert got["ce_teacher"].item() == pytest.approx(F.cross_entropy(z_en, y).item(), rel=1e-5)
    assert got["kd_teacher"].item() == pytest.approx(
        w * sum(_kl(z_en, zi) for zi in z).item(), rel=1e-4
    )
    others = [(1, 2), (0, 2), (0, 1)]
    expected = sum((_kl(z_mean[:, a], z[i]) + _kl(z_mean[:, b], z[i])) / 2
                   for i, (a, b) in enumerate(others))  # fmt: skip
    assert got["kd_mean"].item() == pytest.approx(w * expected.item(), rel=1e-4)
    everyone = sum(sum(_kl(z_mean[:, k], z[i]) for k in range(3)) / 3 for i in range(3))
    assert abs(everyone.item() - expected.item()) > 1e-4  # a peer's own mean is not its target


def test_pcl_is_evaluated_on_its_temporal_means_and_on_its_raw_peers(digits, fast_config):
    result = kdlab.run("pcl", ["cnn_tiny_branches3"], digits, config=fast_config,
                       progress=False, rampup=1.0)  # fmt: skip
    last = result.history[-1]
    for name in ("mean1", "mean2", "mean3", "branch1", "branch2", "branch3", "teacher"):
        assert f"acc/{name}" in last
    assert "agree/mean1-mean2" in last and "agree/branch1-branch2" not in last
    assert int(result.method.ema_updates) == 2 * len(range(0, 200, 50))


# ----------------------------------------------------------------------------- all five


FAMILY = {
    "one": ["cnn_tiny_branches3"],
    "cl_ilr": ["cnn_tiny_branches3"],
    "okddip": ["cnn_tiny_branches4"],
    "kdcl": ["cnn_tiny"] * 3,
    "pcl": ["cnn_tiny_branches3"],
}


@pytest.mark.parametrize("name", FAMILY)
def test_every_member_trains_past_chance_and_draws_its_graph(digits, name):
    config = kdlab.TrainConfig(epochs=6, batch_size=50, lr=0.1, schedule="cosine", device="cpu")
    result = kdlab.run(name, FAMILY[name], digits, config=config, progress=False, rampup=2.0)
    assert result.history[-1]["acc/ensemble"] > 35  # chance: 10 %
    method = result.method
    evaluated = set(method.evaluated())
    for edge in method.teaching_edges():
        assert edge.kind in ("teaches", "builds", "ema")
        if edge.kind == "teaches":
            assert edge.target in evaluated  # a KL target trains an evaluated network
    from kdlab.plots import teaching_graphs

    assert teaching_graphs({name: method}).axes


@pytest.mark.parametrize("name", ["pcl", "one"])
def test_a_resumed_run_equals_an_uninterrupted_one(digits, tmp_path, name):
    """PCL's temporal means, their update counter and its per-peer views, ONE's gate and its
    optimizer: everything a step changes comes back from the checkpoint."""
    config = kdlab.TrainConfig(epochs=3, batch_size=50, lr=0.05, schedule="step",
                               milestones=(2,), device="cpu")  # fmt: skip
    kwargs = dict(config=config, progress=False, rampup=2.0)
    whole = kdlab.run(name, FAMILY[name], digits, out=tmp_path / "whole", **kwargs)
    part = tmp_path / "part"
    kdlab.run(name, FAMILY[name], digits, out=part, stop_after=1, **kwargs)
    torch.manual_seed(1234)  # a fresh process state: everything must come from the checkpoint
    resumed = kdlab.run(name, FAMILY[name], digits, out=part, resume=True, **kwargs)

    def without_time(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert without_time(resumed.history) == without_time(whole.history)
    assert resumed.history[2]["lr"] == pytest.approx(0.005)  # the schedule resumed too
    state, other = whole.method.state_dict(), resumed.method.state_dict()
    assert set(state) == set(other)
    for key, value in state.items():
        assert torch.equal(value, other[key]), key
    if name == "pcl":
        assert any(k.startswith("means.") for k in state) and "ema_updates" in state
        assert int(resumed.method.ema_updates) == 3 * 4


def test_the_smoke_grid_runs_to_its_table(tmp_path):
    """online_family_smoke (the digits grid in the smoke profile) trained cell by cell, then
    aggregated: every method's rows, the compute columns, and PCL's table where it applies."""
    from kdlab import reproduce

    out = tmp_path / "grid"
    outcomes = reproduce.run_grid("online_family_smoke", out, how="direct", progress=False)
    assert [o["status"] for o in outcomes] == ["ok"] * 7
    results, runs = reproduce.load_results(out)[:2]
    assert set(results["method"]) == {"independent", "dml", "kdcl", "one", "cl_ilr", "okddip",
                                      "pcl"}  # fmt: skip
    pcl = results[results["method"] == "pcl"].set_index("network")
    assert {"mean1", "branch1", "teacher", "ensemble"} <= set(pcl.index)
    assert pcl.loc["mean1", "net_macs"] == pcl.loc["branch1", "net_macs"] > 0
    assert pcl.loc["mean1", "train_macs"] > 3 * pcl.loc["mean1", "net_macs"]
    table = (out / "results.md").read_text()
    assert "params · MACs (M)" in table and "| pcl |" in table
    assert results["published"].isna().all()  # digits: no published number applies
