"""Multi-branch networks (kdlab/models/branches.py), the loader's augmented views, and the
compute of a method's networks (kdlab/cost.py)."""

from __future__ import annotations

import pytest
import torch

import kdlab
from kdlab.cost import method_cost
from kdlab.data import DeviceLoader
from kdlab.models import build_model
from kdlab.models.branches import BranchView
from kdlab.tasks import Task
from kdlab.train import check_task


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_last_stage_is_replicated_over_one_trunk():
    torch.manual_seed(0)
    net = build_model("resnet32_branches3", 100)
    single = build_model("resnet32", 100)
    stage3 = _params(single.stages[-1]) + _params(single.classifier)  # 351,488 + 6,500
    # trunk + 3 × (stage 3 + classifier) = resnet32 + 2 × (stage 3 + classifier)
    assert _params(net) == _params(single) + 2 * stage3 == 470_004 + 2 * 357_988
    assert (net.num_branches, net.trunk_channels, net.feature_dim) == (3, 32, 64)
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    logits = net(x)
    assert logits.shape == (4, 3, 100)
    for i in range(3):  # a branch alone gives the stacked output's slice
        assert torch.allclose(net.branch(x, i), logits[:, i], atol=1e-5)
        assert torch.allclose(BranchView(net, i)(x), logits[:, i], atol=1e-5)
    # Each branch is drawn afresh, not a copy of the first.
    first, second = (b.classifier.weight for b in net.branches[:2])
    assert not torch.equal(first, second)
    _, trunk, maps = net(x, return_features=True)
    assert trunk.shape == (4, 32, 16, 16) and [m.shape for m in maps] == [(4, 64, 8, 8)] * 3


def test_one_view_per_branch_runs_the_trunk_on_each():
    net = build_model("cnn_tiny_branches3", 10, 1).eval()
    views = tuple(torch.randn(5, 1, 8, 8) for _ in range(3))
    logits, trunk, _ = net(views, return_features=True)
    assert len(trunk) == 3
    for i, view in enumerate(views):
        assert torch.allclose(logits[:, i], net.branch(view, i), atol=1e-6)
    with pytest.raises(ValueError, match="got 2 views for 3 branches"):
        net(views[:2])


@pytest.mark.parametrize(
    "name, message",
    [("resnet33_branches3", "depth 33: it must be 6n \\+ 2"),
     ("resnet32_branches1", "at least 2 branches"),
     ("wrn_20_8_branches3", "Wide ResNet depth 20: it must be 6n \\+ 4")],
)  # fmt: skip
def test_bad_branch_names_are_one_line_errors(name, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, 10)


def test_wide_and_small_branches_build():
    x = torch.randn(2, 3, 16, 16)
    assert build_model("wrn_10_2_branches2", 7)(x).shape == (2, 2, 7)
    assert build_model("cnn_small_branches4", 7)(x).shape == (2, 4, 7)


def test_trunk_gradient_scaling_divides_the_trunk_gradient_only():
    """With ``trunk_grad_scale = 1/m`` the trunk receives a third of the gradient; the branches'
    gradients do not change."""
    torch.manual_seed(0)
    net = build_model("cnn_tiny_branches3", 10, 1)
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    grads = {}
    for scale in (1.0, 1 / 3):
        net.zero_grad()
        net.trunk_grad_scale = scale
        sum(torch.nn.functional.cross_entropy(z, y) for z in net(x).unbind(1)).backward()
        grads[scale] = {n: p.grad.clone() for n, p in net.named_parameters()}
    for name, full in grads[1.0].items():
        ratio = 1 / 3 if name.startswith("trunk.") else 1.0
        assert torch.allclose(grads[1 / 3][name], ratio * full, rtol=1e-4, atol=1e-7), name


def test_a_single_output_method_refuses_a_branched_network():
    with pytest.raises(ValueError, match="method 'dml' trains single-output networks; net1 is"):
        kdlab.get_method("dml")({"net1": build_model("cnn_tiny_branches3", 10, 1)})
    with pytest.raises(ValueError, match="method 'one' trains one multi-branch network"):
        kdlab.get_method("one")({"net1": build_model("cnn_tiny", 10, 1)})
    with pytest.raises(ValueError, match="needs at least 3 branches, cnn_tiny_branches2 has 2"):
        kdlab.get_method("okddip")({"net1": build_model("cnn_tiny_branches2", 10, 1)})


def test_the_loader_gives_independent_views_of_the_same_images(digits):
    def loader(views):
        return DeviceLoader.train(digits, 50, "cpu", seed=3, views=views)

    single, triple = next(iter(loader(1))), next(iter(loader(3)))
    views, labels = triple
    assert isinstance(views, tuple) and len(views) == 3
    assert torch.equal(labels, single[1])  # the same images in the same order
    assert all(v.shape == single[0].shape for v in views)
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    # One view per batch is what the loader gave before views existed: the same draws.
    assert torch.equal(single[0], next(iter(DeviceLoader.train(digits, 50, "cpu", seed=3)))[0])
    with pytest.raises(ValueError, match="views must be 1"):
        DeviceLoader.test(digits, 50, "cpu", views=2)


def test_a_task_without_views_refuses_a_method_that_needs_them(digits):
    class OneView(Task):
        name = "one-view"

    kdcl = kdlab.get_method("kdcl")({f"s{i}": build_model("cnn_tiny", 10, 1) for i in (1, 2)})
    data = type("Data", (), {"task": OneView(), "name": "fake"})()
    kdcl.tasks = ("one-view",)
    with pytest.raises(ValueError, match="trains on 2 augmented views of each image; the one-view"):
        check_task(kdcl, data)


# MACs of resnet32 (option A shortcuts) on a 32×32 image, by hand: stem 3·3·3·16·32², stage 1
# ten convolutions 3·3·16·16·32², stage 2 one 3·3·16·32·16² and nine 3·3·32·32·16², stage 3 the
# same at 32→64 channels on 8², the classifier 64·100.
STEM, STAGE1 = 442_368, 10 * 2_359_296
STAGE2 = STAGE3 = 1_179_648 + 9 * 2_359_296
RESNET32 = STEM + STAGE1 + STAGE2 + STAGE3 + 6_400


def test_macs_and_parameters_by_hand():
    def cost(method, archs):
        nets = {f"net{i}": build_model(a, 100) for i, a in enumerate(archs, 1)}
        return method_cost(kdlab.get_method(method)(nets), (3, 32, 32))

    alone = cost("independent", ["resnet32"])
    assert alone["macs"] == RESNET32 == 68_868_352 and alone["params"] == 470_004
    dml = cost("dml", ["resnet32"] * 3)
    assert dml["macs"] == 3 * RESNET32 and dml["params"] == 3 * 470_004
    trunk, branch = STEM + STAGE1 + STAGE2, STAGE3 + 6_400
    cl = cost("cl_ilr", ["resnet32_branches3"])
    assert cl["macs"] == trunk + 3 * branch
    assert cl["networks"]["branch2"] == {"params": 470_004, "macs": RESNET32}
    one = cost("one", ["resnet32_branches3"])
    # ONE adds its gate (32 → 3) and the gated sum (3 × 100 per image).
    assert one["macs"] == trunk + 3 * branch + 32 * 3 + 3 * 100
    assert one["params"] == 470_004 + 2 * 357_988 + (32 * 3 + 3) + 2 * 3
    assert one["networks"]["teacher"]["macs"] == one["macs"]
    pcl = cost("pcl", ["resnet32_branches3"])
    # Per-peer views: the trunk runs once per peer, for the network and for its temporal mean.
    assert pcl["macs"] == 2 * 3 * (trunk + branch) + 3 * 64 * 100
    assert pcl["networks"]["mean1"]["macs"] == RESNET32


def test_a_runs_summary_has_its_cost(digits, fast_config):
    result = kdlab.run("one", ["cnn_tiny_branches3"], digits, config=fast_config, progress=False)
    cost = result.summary["cost"]
    assert cost["params"] == sum(p.numel() for p in result.method.networks.parameters())
    assert set(cost["networks"]) == {"branch1", "branch2", "branch3", "teacher"}
