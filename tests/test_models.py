"""Tests for kdlab.models: architecture sizes, the forward/feature contract, and robustness."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlab.models import available_models, build_model

FIXED_NAMES = [
    "cnn",
    "cnn_small",
    "cnn_tiny",
    "mobilenet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "mobilenetv1",  # kdlab/models/imagenet.py
    "inceptionv1",
    "resnet50",
    "resnet164",  # kdlab/models/preact.py
]

# GoogLeNet's four max-pools need an input of 16×16 or more (kdlab/models/imagenet.py).
MIN_SIZE = {"inceptionv1": 16}

# name -> (stage channels, stage spatial sizes for a 32x32 input)
EXPECTED_STAGES = {
    "cnn": ([32, 64, 128], [32, 16, 8]),
    "cnn_small": ([16, 32, 64], [32, 16, 8]),
    "cnn_tiny": ([8, 16, 32], [32, 16, 8]),
    "mobilenet": ([128, 256, 512, 1024], [16, 8, 4, 2]),
    "resnet20": ([16, 32, 64], [32, 16, 8]),
    "resnet32": ([16, 32, 64], [32, 16, 8]),
    "resnet44": ([16, 32, 64], [32, 16, 8]),
    "resnet56": ([16, 32, 64], [32, 16, 8]),
    "resnet110": ([16, 32, 64], [32, 16, 8]),
    "resnet8x4": ([64, 128, 256], [32, 16, 8]),
    "resnet32x4": ([64, 128, 256], [32, 16, 8]),
    "wrn_10_4": ([64, 128, 256], [32, 16, 8]),
    "wrn_16_2": ([32, 64, 128], [32, 16, 8]),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def round_sig(x: float, digits: int = 2) -> float:
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- registry


def test_available_models_lists_fixed_names_and_wrn_pattern():
    names = available_models()
    assert names[: len(FIXED_NAMES)] == FIXED_NAMES
    # Then the patterns: the wide ResNets, and the multi-branch families (models/branches.py).
    assert names[len(FIXED_NAMES) :] == [
        "wrn_<depth>_<width>", "resnet<depth>_branches<m>", "wrn_<depth>_<width>_branches<m>",
        "cnn[_small|_tiny]_branches<m>",
    ]  # fmt: skip


@pytest.mark.parametrize("bad", ["resnet21", "wrn", "wrn_16", "wrn_16_0", "ResNet20", ""])
def test_unknown_name_lists_known_names(bad):
    with pytest.raises(ValueError) as info:
        build_model(bad, num_classes=10)
    msg = str(info.value)
    assert repr(bad) in msg
    for name in ("cnn_tiny", "mobilenet", "resnet20", "resnet110", "wrn_<depth>_<width>"):
        assert name in msg


@pytest.mark.parametrize("name", ["wrn_12_2", "wrn_4_2", "wrn_15_1"])
def test_wrn_depth_must_be_6n_plus_4(name):
    with pytest.raises(ValueError, match="depth"):
        build_model(name, num_classes=10)


@pytest.mark.parametrize("num_classes", [1, 0, -3])
def test_rejects_fewer_than_two_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cnn_tiny", num_classes=num_classes)


@pytest.mark.parametrize("in_channels", [0, -1])
def test_rejects_no_input_channels(in_channels):
    with pytest.raises(ValueError, match="in_channels"):
        build_model("cnn_tiny", num_classes=10, in_channels=in_channels)


@pytest.mark.parametrize("name", ["wrn_22_1", "wrn_34_3", "wrn_40_2"])
def test_any_valid_wrn_parses(name):
    model = build_model(name, num_classes=10)
    depth, width = (int(v) for v in name.split("_")[1:])
    assert model.arch == name
    assert model.stage_channels == [16 * width, 32 * width, 64 * width]
    blocks_per_stage = (depth - 4) // 6
    assert [len(stage) for stage in model.stages] == [blocks_per_stage] * 3


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "name, millions",
    [
        ("resnet20", 0.27),
        ("resnet32", 0.46),
        ("resnet44", 0.66),
        ("resnet56", 0.85),
        ("resnet110", 1.7),
    ],
)
def test_cifar_resnet_parameter_counts(name, millions):
    # He et al. (2016), Table 6, for CIFAR-10.
    assert round_sig(n_params(build_model(name, num_classes=10)) / 1e6) == millions


def test_resnet20_exact_count_and_option_a_shortcuts():
    model = build_model("resnet20", num_classes=10)
    # stem 3*16*9 + 2*16; 3 stages of 3 blocks, each 2 convs + 2 BNs; linear 64*10 + 10
    convs = 16 * 16 * 9 * 6 + (16 * 32 * 9 + 32 * 32 * 9 * 5) + (32 * 64 * 9 + 64 * 64 * 9 * 5)
    bns = 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    assert n_params(model) == 3 * 16 * 9 + convs + bns + 64 * 10 + 10 == 269_722
    # Option A: no projection convolutions anywhere.
    assert all(m.kernel_size == (3, 3) for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    "name, num_classes, millions",
    [
        ("wrn_16_2", 10, 0.69),
        ("wrn_40_2", 100, 2.3),
        ("resnet8x4", 100, 1.2),
        ("resnet32x4", 100, 7.4),
        ("mobilenet", 10, 3.2),
    ],
)
def test_other_parameter_counts(name, num_classes, millions):
    assert round_sig(n_params(build_model(name, num_classes=num_classes)) / 1e6) == millions


def test_wrn_28_10_builds_with_36_5_million_parameters():
    model = build_model("wrn_28_10", num_classes=10)
    assert n_params(model) == 36_479_194
    assert round(n_params(model) / 1e6, 1) == 36.5
    assert model.stage_channels == [160, 320, 640]
    assert model.feature_dim == 640
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_small_cnns_are_small():
    sizes = {
        name: n_params(build_model(name, num_classes=10))
        for name in ("cnn", "cnn_small", "cnn_tiny")
    }
    assert sizes["cnn_tiny"] == 6_418
    assert sizes["cnn_small"] == 24_346
    assert sizes["cnn"] == 94_762


# --------------------------------------------------------------------------- forward contract


@pytest.mark.parametrize("name", list(EXPECTED_STAGES))
def test_forward_shapes_and_features(name):
    channels, sizes = EXPECTED_STAGES[name]
    model = build_model(name, num_classes=7).eval()
    assert model.arch == name
    assert model.stage_channels == channels
    assert model.feature_dim == channels[-1]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        logits_f, feats = model(x, return_features=True)
    assert logits.shape == (2, 7)
    assert torch.allclose(logits_f, logits, atol=1e-6, rtol=0)
    assert [tuple(f.shape) for f in feats] == [
        (2, c, s, s) for c, s in zip(channels, sizes, strict=True)
    ]
    assert [f.shape[1] for f in feats] == model.stage_channels

    with torch.no_grad():
        # The features come from the same pass, in order, and none was overwritten in place.
        assert torch.allclose(feats[0], model.stages[0](model.stem(x)), atol=1e-5)
        for i in range(1, len(feats) - 1):
            assert torch.allclose(feats[i], model.stages[i](feats[i - 1]), atol=1e-5)
        last = model.head_act(model.stages[-1](feats[-2]))
        assert torch.allclose(feats[-1], last, atol=1e-5)
        # The last feature map is what the classifier sees after global average pooling.
        pooled = feats[-1].mean(dim=(2, 3))
        assert pooled.shape == (2, model.feature_dim)
        assert torch.allclose(model.classifier(pooled), logits, atol=1e-5)


def test_resnet20_grayscale_8x8():
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
        assert torch.allclose(model(x), logits, atol=1e-6, rtol=0)
    assert logits.shape == (2, 10)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]


@pytest.mark.parametrize("name", FIXED_NAMES + ["wrn_10_4"])
@pytest.mark.parametrize("size", [8, 28])
def test_any_input_size_from_8(name, size):
    size = max(size, MIN_SIZE.get(name, 0))
    model = build_model(name, num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(2, 1, size, size), return_features=True)
    assert logits.shape == (2, 3)
    assert len(feats) == len(model.stage_channels)
    assert all(f.shape[2] >= 1 and f.shape[3] >= 1 for f in feats)


def test_pre_activation_last_feature_is_after_final_bn_relu():
    model = build_model("wrn_10_4", num_classes=10).eval()
    with torch.no_grad():
        _, feats = model(torch.randn(2, 3, 32, 32), return_features=True)
    assert feats[-1].min() >= 0  # ReLU applied
    assert feats[0].min() < 0  # intermediate stages are pre-activation sums


# --------------------------------------------------------------------------- training details


def test_init_kaiming_normal_and_bn_constants():
    model = build_model("resnet32x4", num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.stages[2][1].conv2  # 256 -> 256, 3x3: fan_out = 256 * 9
    expected_std = math.sqrt(2.0 / (256 * 9))
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.02
    assert abs(conv.weight.mean().item()) < 0.05 * expected_std


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4", "wrn_10_4", "mobilenet", "cnn_tiny"])
def test_channels_last_matches_contiguous(name):
    model = build_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref, ref_feats = model(x, return_features=True)
        model = model.to(memory_format=torch.channels_last)
        out, feats = model(x.to(memory_format=torch.channels_last), return_features=True)
    assert torch.allclose(out, ref, atol=1e-4)
    assert len(feats) == len(ref_feats)
    for f, g in zip(feats, ref_feats, strict=True):
        assert torch.allclose(f, g, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4", "wrn_10_4", "mobilenet", "cnn_tiny"])
def test_autocast_and_feature_loss_backward(name):
    model = build_model(name, num_classes=10).train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = model(x, return_features=True)
        loss = nn.functional.cross_entropy(logits, torch.tensor([1, 2]))
        loss = loss + sum(f.float().pow(2).mean() for f in feats)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.classifier.weight.grad.abs().sum() > 0


def test_feature_gradients_reach_the_input_side():
    model = build_model("cnn_small", num_classes=10).train()
    _, feats = model(torch.randn(2, 3, 16, 16), return_features=True)
    feats[0].pow(2).mean().backward()
    first_conv = model.stages[0][0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad is None
