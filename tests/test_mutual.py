"""DML, ADML and TADML: their losses by hand, where gradient may flow, which modules each step
changes, and short runs through the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from kdlab.cli import main
from kdlab.losses import pooled_embedding, topology_loss
from kdlab.methods import get_method
from kdlab.models import build_model
from kdlab.train import TrainConfig, fit, run

LN3 = math.log(3.0)


class FixedLogits(nn.Module):
    """A "network" whose logits are a trainable constant (the input is ignored)."""

    def __init__(self, logits) -> None:
        super().__init__()
        self.z = nn.Parameter(torch.tensor(logits, dtype=torch.float32))
        self.num_classes = self.z.shape[1]

    def forward(self, x):
        return self.z * 1.0


def _collect(method, x, y):
    """Run one training step, recording every ``update`` call's terms (nothing is stepped)."""
    calls = []
    method.training_step(x, y, lambda terms: calls.append(terms))
    return calls


def _peers(logits):
    return {f"peer{i}": FixedLogits(z) for i, z in enumerate(logits, start=1)}


# -- DML: the formula by hand ----------------------------------------------------------------

# One sample, two classes: p1 = [1/4, 3/4], p2 = [1/2, 1/2], p3 = [3/4, 1/4].
Z1, Z2, Z3 = [[0.0, LN3]], [[0.0, 0.0]], [[LN3, 0.0]]


def test_dml_loss_two_peers_by_hand():
    method = get_method("dml")(_peers([Z1, Z2]), lam=2.0)
    (terms,) = _collect(method, torch.zeros(1, 1), torch.tensor([1]))
    # L_1 = CE(y, z1) + λ · KL(p2 ‖ p1) = −ln ¾ + 2 · ½ ln(4/3)
    assert terms["peer1"]["ce"].item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert terms["peer1"]["kl"].item() == pytest.approx(math.log(4 / 3), abs=1e-6)
    # L_2 = CE(y, z2) + λ · KL(p1 ‖ p2) = ln 2 + 2 · (¼ ln(¼/½) + ¾ ln(¾/½))
    kl_12 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert terms["peer2"]["ce"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert terms["peer2"]["kl"].item() == pytest.approx(2 * kl_12, abs=1e-6)


def test_dml_loss_three_peers_averages_over_the_other_two():
    method = get_method("dml")(_peers([Z1, Z2, Z3]), lam=1.0)
    (terms,) = _collect(method, torch.zeros(1, 1), torch.tensor([1]))
    # Peer 1: ½ [KL(p2 ‖ p1) + KL(p3 ‖ p1)] = ½ [½ ln(4/3) + ½ ln 3] = ½ ln 2 (a sum would be ln 2).
    assert terms["peer1"]["kl"].item() == pytest.approx(0.5 * math.log(2), abs=1e-6)
    # Peer 2: ½ [KL(p1 ‖ p2) + KL(p3 ‖ p2)], both = ¼ ln ½ + ¾ ln(3/2) by symmetry.
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert terms["peer2"]["kl"].item() == pytest.approx(kl, abs=1e-6)


def test_dml_temperature_and_the_weight_of_a_single_term():
    # With T = 2 and doubled logits the distributions (and the term, no T²) are those above.
    method = get_method("dml")(_peers([[[0.0, 2 * LN3]], [[0.0, 0.0]]]), lam=0.5, temperature=2.0)
    (terms,) = _collect(method, torch.zeros(1, 1), torch.tensor([0]))
    assert terms["peer1"]["kl"].item() == pytest.approx(0.5 * 0.5 * math.log(4 / 3), abs=1e-6)
    # CE uses the logits at T = 1: p1 = softmax([0, 2 ln 3]) = [1/10, 9/10].
    assert terms["peer1"]["ce"].item() == pytest.approx(-math.log(0.1), abs=1e-6)


def test_dml_alternating_updates_one_peer_at_a_time_in_order():
    torch.manual_seed(0)
    nets = {f"peer{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2, 3)}
    method = get_method("dml")(nets, update_order="alternating").train()
    seen = []

    def update(terms):
        seen.append(list(terms))
        sum(next(iter(terms.values())).values()).backward()

    method.training_step(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)), update)
    assert seen == [["peer1"], ["peer2"], ["peer3"]]


def test_dml_alternating_peer2_term_uses_updated_peer1():
    """Against a hand-run of Algorithm 1 with fixed-logit peers (no BatchNorm to disturb)."""
    peers = _peers([Z1, Z2])
    # λ = ½: with λ = 1 peer 1's CE and KL gradients cancel exactly on these logits.
    method = get_method("dml")(peers, lam=0.5, update_order="alternating")
    opt = {n: torch.optim.SGD(p.parameters(), lr=1.0) for n, p in peers.items()}
    kl_seen = {}

    def update(terms):
        (name,) = terms
        kl_seen[name] = terms[name]["kl"].item()
        opt[name].zero_grad()
        sum(terms[name].values()).backward()
        opt[name].step()

    method.training_step(torch.zeros(1, 1), torch.tensor([1]), update)
    p1 = torch.softmax(peers["peer1"].z.detach(), 1)[0].tolist()  # after peer 1's step
    expected = 0.5 * sum(a * math.log(a / 0.5) for a in p1)  # λ · KL(p1_new ‖ p2), p2 = [½, ½]
    assert kl_seen["peer2"] == pytest.approx(expected, abs=1e-6)
    stale = 0.5 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))  # against peer 1 before its step
    assert kl_seen["peer2"] != pytest.approx(stale, abs=1e-3)


# -- ADML and TADML: the formula by hand -----------------------------------------------------


def _js(p, q):
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _softplus(v):
    return math.log1p(math.exp(v))


P1, P2, P3 = [0.25, 0.75], [0.5, 0.5], [0.75, 0.25]  # softmax of Z1, Z2, Z3


def _linear_discriminators(method):
    """Replace every D_k by the same known function ``D(v) = v_0 − v_1`` (one logit)."""
    for name in method.auxiliary:
        disc = nn.Linear(2, 1)
        with torch.no_grad():
            disc.weight.copy_(torch.tensor([[1.0, -1.0]]))
            disc.bias.zero_()
        method.auxiliary[name] = disc


def test_adml_default_divergence_is_js_averaged_over_the_other_peers():
    # Three peers: peer 1's term is λ_div · ½ [JS(p1, p2) + JS(p1, p3)] with the defaults
    # (JS, λ_div = 1). A sum over the peers would double it; KL (DML's term) is another number.
    method = get_method("adml")(_peers([Z1, Z2, Z3]))
    _, terms = _collect(method, torch.zeros(1, 1), torch.tensor([1]))
    expected = 0.5 * (_js(P1, P2) + _js(P1, P3))
    as_kl = 0.5 * (_kl(P2, P1) + _kl(P3, P1))
    assert abs(as_kl - expected) > 0.1
    assert terms["peer1"]["div"].item() == pytest.approx(expected, rel=1e-5)
    # Peer 2 sits halfway: JS(p2, p1) = JS(p2, p3), so its mean is either one.
    assert terms["peer2"]["div"].item() == pytest.approx(_js(P2, P1), rel=1e-5)
    kl_method = get_method("adml")(_peers([Z1, Z2, Z3]), divergence="kl", lam_div=2.0)
    _, kl_terms = _collect(kl_method, torch.zeros(1, 1), torch.tensor([1]))
    assert kl_terms["peer1"]["div"].item() == pytest.approx(2 * as_kl, rel=1e-5)


def test_adml_discriminator_takes_the_peers_as_real_and_its_own_network_as_fake():
    # With D(v) = v_0 − v_1: D(z1) = −ln 3 (peer 1's own output, "fake"), and the other peers'
    # outputs ("real") give D(z2) = 0 and D(z3) = ln 3. BCE(σ(d), 1) = softplus(−d) and
    # BCE(σ(d), 0) = softplus(d), each a mean over its samples:
    # L_D^1 = ½ [softplus(0) + softplus(−ln 3)] + softplus(−ln 3) = ½ ln(8/3) + ln(4/3).
    method = get_method("adml")(_peers([Z1, Z2, Z3]))
    _linear_discriminators(method)
    calls = []
    metrics = method.training_step(torch.zeros(1, 1), torch.tensor([1]), calls.append)
    disc_terms = calls[0]
    expected = 0.5 * math.log(8 / 3) + math.log(4 / 3)
    swapped = 0.5 * math.log(8) + math.log(4)  # real labelled 0, fake labelled 1
    assert disc_terms["disc1"]["bce"].item() == pytest.approx(expected, rel=1e-5)
    assert abs(swapped - expected) > 1
    # Its accuracy: one of the two real outputs is judged real (D > 0), the fake one is judged
    # fake (D ≤ 0): ½ (½ + 1) = 0.75.
    assert metrics["disc_acc/disc1"].item() == pytest.approx(0.75)
    # D_3 sees z3 as fake (D = ln 3) and z1, z2 as real (D = −ln 3, 0).
    expected_3 = 0.5 * (_softplus(LN3) + math.log(2)) + _softplus(LN3)
    assert disc_terms["disc3"]["bce"].item() == pytest.approx(expected_3, rel=1e-5)


def test_adml_adversarial_term_pushes_the_network_towards_real_with_weight_one_tenth():
    # L_adv^1 = BCE(σ(D(z1)), 1) = softplus(−D(z1)) = softplus(ln 3) = ln 4, times the default
    # λ_adv = 0.1. Target 0 would give 0.1 · ln(4/3); λ_adv = 1 would give ln 4.
    method = get_method("adml")(_peers([Z1, Z2, Z3]))
    _linear_discriminators(method)
    _, terms = _collect(method, torch.zeros(1, 1), torch.tensor([1]))
    assert terms["peer1"]["adv"].item() == pytest.approx(0.1 * math.log(4), rel=1e-5)
    assert terms["peer3"]["adv"].item() == pytest.approx(0.1 * math.log(4 / 3), rel=1e-5)
    # Its gradient lowers the loss by moving D(z1) up: towards "real".
    z1 = method.networks["peer1"].z
    (grad,) = torch.autograd.grad(terms["peer1"]["adv"], z1)
    assert grad[0, 0].item() < 0 < grad[0, 1].item()


def test_adml_discriminators_use_adam_with_the_gan_betas():
    method = get_method("adml")(_peers([Z1, Z2]))
    optimizers = method.auxiliary_optimizers()
    assert set(optimizers) == {"disc1", "disc2"}
    for opt in optimizers.values():
        assert isinstance(opt, torch.optim.Adam)
        assert opt.defaults["lr"] == pytest.approx(2e-4)
        assert tuple(opt.defaults["betas"]) == (0.5, 0.999)  # Adam's own default is (0.9, 0.999)
    chosen = get_method("adml")(_peers([Z1, Z2]), disc_betas=(0.9, 0.99)).auxiliary_optimizers()
    assert tuple(chosen["disc1"].defaults["betas"]) == (0.9, 0.99)


class FixedOutputs(FixedLogits):
    """Fixed logits and fixed stage features (B×D each), as ``net(x, return_features=True)``."""

    def __init__(self, logits, stages) -> None:
        super().__init__(logits)
        self.stages = nn.ParameterList([nn.Parameter(s.clone()) for s in stages])

    def forward(self, x, return_features=False):
        z = self.z * 1.0
        return (z, [s * 1.0 for s in self.stages]) if return_features else z


def _tadml_peers(n=3, batch=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        f"peer{i}": FixedOutputs(
            torch.randn(batch, 3, generator=g).tolist(),
            [torch.randn(batch, 4, generator=g), torch.randn(batch, 5, generator=g)],
        )
        for i in range(1, n + 1)
    }


def test_tadml_topology_uses_the_last_stage_averaged_over_the_other_peers():
    peers = _tadml_peers()
    method = get_method("tadml")(peers, topo_k=2, lam_topo=2.0)
    _, terms = _collect(method, torch.zeros(6, 1), torch.arange(6) % 3)
    stages = {n: [pooled_embedding(s.detach()) for s in net.stages] for n, net in peers.items()}

    def topo(stage, a, b):
        return topology_loss(stages[a][stage], stages[b][stage], k=2, tau=0.1).item()

    expected = 2.0 * 0.5 * (topo(-1, "peer1", "peer2") + topo(-1, "peer1", "peer3"))
    first_stage = 2.0 * 0.5 * (topo(0, "peer1", "peer2") + topo(0, "peer1", "peer3"))
    assert abs(first_stage - expected) > 0.05  # the example tells the stages apart
    assert terms["peer1"]["topo"].item() == pytest.approx(expected, rel=1e-5)  # a sum: 2×
    expected_3 = 2.0 * 0.5 * (topo(-1, "peer3", "peer1") + topo(-1, "peer3", "peer2"))
    assert terms["peer3"]["topo"].item() == pytest.approx(expected_3, rel=1e-5)


# -- no gradient through another network's terms ---------------------------------------------


def _peer1_backward(method, x, y, term=None):
    """Backpropagate peer 1's terms only (or one of them), as the loop would, no step."""
    method.train()
    method.zero_grad(set_to_none=True)
    captured = {}

    def update(terms):
        if "peer1" in terms:
            captured.update(terms["peer1"])

    method.training_step(x, y, update)
    chosen = [captured[term]] if term else list(captured.values())
    sum(chosen).backward()
    return captured


def _no_grad(module):
    return all(p.grad is None or not p.grad.any() for p in module.parameters())


def _has_grad(module):
    return any(p.grad is not None and p.grad.any() for p in module.parameters())


@pytest.mark.parametrize(
    "method_name, term",
    [
        ("dml", "kl"),
        ("adml", "div"),
        ("adml", "adv"),
        ("tadml", "div"),
        ("tadml", "adv"),
        ("tadml", "topo"),
        ("tadml", None),
    ],
)
def test_a_peers_terms_send_no_gradient_to_the_other_peers(method_name, term):
    torch.manual_seed(0)
    nets = {f"peer{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2, 3)}
    params = {"topo_k": 4} if method_name == "tadml" else {}
    method = get_method(method_name)(nets, **params)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    terms = _peer1_backward(method, x, y, term)
    if term:
        assert terms[term].item() > 0
    assert _has_grad(nets["peer1"])
    assert _no_grad(nets["peer2"]) and _no_grad(nets["peer3"])
    # The adversarial term trains the network, not its discriminator (nor any other).
    for disc in method.auxiliary.values():
        assert _no_grad(disc)


# -- which modules each step changes (the real loop) -----------------------------------------


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before, module):
    return any(not torch.equal(before[n], p) for n, p in module.named_parameters())


@pytest.mark.parametrize("method_name", ["adml", "tadml"])
def test_discriminator_step_changes_no_network_and_network_step_no_discriminator(
    digits, fast_config, method_name
):
    torch.manual_seed(0)
    nets = {f"peer{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2)}
    params = {"topo_k": 8} if method_name == "tadml" else {}
    method = get_method(method_name)(nets, **params)
    log = []
    inner = method.training_step

    def spying_step(x, y, update, **where):
        def spy(terms):
            before = {n: _snapshot(m) for n, m in {**nets, **method.auxiliary}.items()}
            update(terms)
            changed = {n for n, m in {**nets, **method.auxiliary}.items() if _changed(before[n], m)}
            log.append((set(terms), changed))

        return inner(x, y, spy, **where)

    method.training_step = spying_step  # the real fit, its optimizers and its update
    config = TrainConfig(
        epochs=1, batch_size=50, lr=0.05, schedule="constant", device="cpu", seed=0
    )
    fit(method, digits, config, progress=False)
    assert len(log) == 2 * 4  # two update calls per batch, 200 / 50 batches
    for named, changed in log[0::2]:
        assert named == {"disc1", "disc2"} and changed == {"disc1", "disc2"}
    for named, changed in log[1::2]:
        assert named == {"peer1", "peer2"} and changed == {"peer1", "peer2"}


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method_name, params, message",
    [
        ("dml", {"lam": -1.0}, "lam must be ≥ 0"),
        ("dml", {"temperature": 0.0}, "temperature must be > 0"),
        ("dml", {"update_order": "async"}, "unknown update_order 'async'"),
        ("dml", {"schedule": "alternating"}, "it is now 'update_order'"),
        ("adml", {"lam_div": -0.1}, "lam_div must be ≥ 0"),
        ("adml", {"lam_adv": -0.1}, "lam_adv must be ≥ 0"),
        ("adml", {"divergence": "cos"}, "unknown divergence 'cos'"),
        ("adml", {"disc_input": "images"}, "unknown disc_input 'images'"),
        ("adml", {"disc_hidden": (0,)}, "disc_hidden"),
        ("adml", {"disc_lr": 0.0}, "disc_lr must be > 0"),
        ("adml", {"disc_betas": (0.5,)}, "disc_betas"),
        ("tadml", {"lam_topo": -1.0}, "lam_topo must be ≥ 0"),
        ("tadml", {"topo_k": 0}, "topo_k must be ≥ 1"),
        ("tadml", {"topo_tau": 0.0}, "topo_tau must be > 0"),
        ("tadml", {"topo_sampling": "far"}, "unknown topo_sampling 'far'"),
        ("tadml", {"topo_stages": "first"}, "unknown topo_stages 'first'"),
        ("tadml", {"divergence": "cos"}, "unknown divergence 'cos'"),
    ],
)
def test_bad_parameters_are_one_line_value_errors(method_name, params, message):
    nets = {f"peer{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2)}
    with pytest.raises(ValueError, match=message) as error:
        get_method(method_name)(nets, **params)
    assert "\n" not in str(error.value)


def test_one_peer_is_not_enough():
    with pytest.raises(ValueError, match="at least 2 networks"):
        get_method("dml")({"peer1": build_model("cnn_tiny", 10, 1)})


def test_feature_discriminator_needs_equal_widths_and_stage_average_equal_depths():
    mixed = {"peer1": build_model("cnn_tiny", 10, 1), "peer2": build_model("cnn_small", 10, 1)}
    with pytest.raises(ValueError, match="outputs of equal width"):
        get_method("adml")(mixed, disc_input="features")
    get_method("adml")(mixed)  # logits are fine
    get_method("tadml")(mixed, topo_k=4)  # topology compares B×B similarities: widths may differ


def test_tadml_checks_the_batch_size_before_training(digits):
    nets = {f"peer{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2)}
    method = get_method("tadml")(nets, topo_k=16)
    with pytest.raises(ValueError, match="topo_k=16 needs batches of more than 16"):
        method.check_batch_size(16)
    method.check_batch_size(17)
    before = _snapshot(method)
    config = TrainConfig(epochs=1, batch_size=10, schedule="constant", device="cpu")
    with pytest.raises(ValueError, match="smallest batch has 10"):
        fit(method, digits, config, progress=False)
    assert not _changed(before, method)


@pytest.mark.parametrize("disc_input", ["features", "logits+label"])
def test_adml_discriminator_inputs(disc_input):
    torch.manual_seed(0)
    nets = {f"peer{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2)}
    method = get_method("adml")(nets, disc_input=disc_input)
    width = {"features": nets["peer1"].feature_dim, "logits+label": 20}[disc_input]
    assert method.auxiliary["disc1"][0].in_features == width
    calls = _collect(method, torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    assert set(calls[0]) == {"disc1", "disc2"} and set(calls[1]) == {"peer1", "peer2"}


def test_tadml_all_stages_averages_over_stages():
    torch.manual_seed(0)
    nets = {f"peer{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2)}
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    method = get_method("tadml")(nets, topo_k=4, topo_stages="all").train()
    with torch.no_grad():
        calls = _collect(method, x, y)
        f1 = nets["peer1"](x, return_features=True)[1]
        f2 = nets["peer2"](x, return_features=True)[1]
    pairs = zip(f1, f2, strict=True)
    per_stage = [topology_loss(pooled_embedding(a), pooled_embedding(b), k=4) for a, b in pairs]
    expected = torch.stack(per_stage).mean()
    # BatchNorm in train mode gives the same batch statistics for the same x.
    assert calls[1]["peer1"]["topo"].item() == pytest.approx(expected.item(), rel=1e-4)


# -- runs --------------------------------------------------------------------------------------


def _cli(tmp_path, method, models="cnn_tiny,cnn_tiny", *extra):
    out = tmp_path / method
    argv = ["train", "--method", method, "--models", models, "--dataset", "digits"]
    argv += ["--train-size", "200", "--epochs", "2", "--batch-size", "20", "--seed", "0"]
    argv += ["--out", str(out), "--no-progress", *extra]
    return main(argv), out


EXPECTED_TERMS = {
    "dml": ("ce", "kl"),
    "adml": ("ce", "div", "adv"),
    "tadml": ("ce", "div", "adv", "topo"),
}


@pytest.mark.parametrize("method_name", ["dml", "adml", "tadml"])
def test_each_method_trains_two_epochs_from_the_command_line(tmp_path, method_name):
    extra = ["--set", "topo_k=8"] if method_name == "tadml" else []
    code, out = _cli(tmp_path, method_name, "cnn_tiny,cnn_tiny", *extra)
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    last = rows[-1]
    for key in ("acc/peer1", "acc/peer2", "acc/ensemble", "agree/peer1-peer2"):
        assert 0 <= last[key] <= 100
    assert 0 <= last["js/peer1-peer2"] <= math.log(2)
    for peer in ("peer1", "peer2"):
        for term in EXPECTED_TERMS[method_name]:
            assert math.isfinite(last[f"loss/{peer}/{term}"])
    if method_name != "dml":
        for disc in ("disc1", "disc2"):
            assert 0 <= last[f"disc_acc/{disc}"] <= 1
            assert last[f"loss/{disc}/bce"] > 0
    # Twenty steps of SGD beat chance (10 %) on the 540 held-out digits.
    assert last["acc/ensemble"] > 20
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["networks"]) == {"peer1", "peer2", "ensemble"}
    assert summary["method"] == method_name
    assert "agree/peer1-peer2" in summary["agreement"]


def test_three_peers_of_different_architectures(tmp_path):
    code, out = _cli(tmp_path, "tadml", "cnn_tiny,cnn_tiny,cnn_small", "--set", "topo_k=4")
    assert code == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for name in ("peer1", "peer2", "peer3"):
        assert f"acc/{name}" in last and f"loss/{name}/topo" in last
    for pair in ("peer1-peer2", "peer1-peer3", "peer2-peer3"):
        assert f"agree/{pair}" in last and f"js/{pair}" in last
    assert {f"disc_acc/disc{i}" for i in (1, 2, 3)} <= set(last)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["networks"]["peer3"]["arch"] == "cnn_small"


def test_alternating_schedule_from_the_command_line(tmp_path):
    code, out = _cli(tmp_path, "dml", "cnn_tiny,cnn_tiny", "--set", "update_order=alternating")
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"]["update_order"] == "alternating"
    assert summary["networks"]["ensemble"]["final_acc"] > 20


def test_negative_weight_exits_2_with_one_line(tmp_path, capsys):
    code, out = _cli(tmp_path, "dml", "cnn_tiny,cnn_tiny", "--set", "lam=-1")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "kdlab: error: lam must be ≥ 0, got -1.0"
    assert not (out / "metrics.jsonl").exists()


def test_batch_too_small_for_topology_exits_2(tmp_path, capsys):
    code, _ = _cli(tmp_path, "tadml", "cnn_tiny,cnn_tiny", "--set", "topo_k=32")
    assert code == 2
    assert "topo_k=32" in capsys.readouterr().err


def test_disc_betas_parse_from_the_command_line(tmp_path):
    code, out = _cli(
        tmp_path, "adml", "cnn_tiny,cnn_tiny", "--set", "disc_betas=0.9,0.99", "--epochs", "1"
    )
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["params"]["disc_betas"] == [0.9, 0.99]


def test_dml_matches_independent_when_lam_is_zero(digits, fast_config):
    """λ = 0 leaves only CE: the same numbers as independent training with the same seed."""
    a = run("independent", "cnn_tiny,cnn_tiny", digits, config=fast_config, progress=False)
    b = run("dml", "cnn_tiny,cnn_tiny", digits, config=fast_config, progress=False, lam=0.0)
    assert a.history[-1]["acc/net1"] == pytest.approx(b.history[-1]["acc/peer1"])
    assert a.history[-1]["loss/net2/ce"] == pytest.approx(b.history[-1]["loss/peer2/ce"], rel=1e-5)
    assert b.history[-1]["loss/peer1/kl"] == 0.0


def test_dml_is_registered_with_its_role():
    cls = get_method("dml")
    assert cls.role == "peer" and cls.min_networks == 2
