"""ResNet-164 (pre-activation bottleneck) counted against Table 7's "2.6", and the CIFAR-style
networks at 64×64 (Tiny-ImageNet): stride-1 stem and global pooling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.models import build_model
from kdlab.models.cifar import _cifar_resnet
from kdlab.models.preact import _PreActBottleneck, preact_resnet


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet164_is_the_pre_activation_bottleneck_network_of_1_7_million():
    model = build_model("resnet164", num_classes=10)
    assert n_params(model) == 1_703_258  # He et al. 2016 (Identity mappings): "1.7M"
    assert n_params(build_model("resnet164", num_classes=100)) == 1_726_388
    blocks = [m for m in model.modules() if isinstance(m, _PreActBottleneck)]
    assert len(blocks) == 3 * 18  # 9n + 2 = 164 with n = 18: 3 layers a block, stem, classifier
    assert model.stage_channels == [64, 128, 256] and model.feature_dim == 256
    # Exactly three projection shortcuts: the first block of each stage (16 → 64, 64 → 128,
    # 128 → 256); every other shortcut is the identity.
    assert sum(b.shortcut is not None for b in blocks) == 3


def test_table7s_2_6_fits_the_basic_block_resnet_of_depth_164():
    """Table 7's "2.6" is 2.6 M parameters of a CIFAR ResNet of basic blocks (6n + 2, n = 27),
    not the pre-activation bottleneck ResNet-164 (1.7 M), nor its size in MB (6.8 MB in float32)."""
    basic = n_params(_cifar_resnet(164, 10, 3, "resnet164_basic"))
    assert basic == 2_602_906 and round(basic / 1e6, 1) == 2.6
    bottleneck = n_params(build_model("resnet164", num_classes=10))
    assert round(bottleneck / 1e6, 1) == 1.7 and round(4 * bottleneck / 1e6, 1) == 6.8


def test_pre_activation_features_and_depth_rule():
    model = build_model("resnet164", num_classes=10).eval()
    with torch.no_grad():
        _, feats = model(torch.randn(2, 3, 32, 32), return_features=True)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    assert feats[0].min() < 0 and feats[-1].min() >= 0  # sums inside, BN + ReLU at the end
    with pytest.raises(ValueError, match="9n \\+ 2"):
        preact_resnet(100, 10, 3, "x")


@pytest.mark.parametrize("name", ["resnet20", "resnet110", "resnet164", "wrn_16_2", "cnn_tiny"])
def test_cifar_networks_at_64_pixels(name):
    """Stride-1 stem, global average pooling: at 64×64 the maps are 64, 32, 16 wide (4× the
    area of 32×32), the parameters those of 32×32, and the logits one row per image."""
    model = build_model(name, num_classes=200).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(2, 3, 64, 64), return_features=True)
    assert logits.shape == (2, 200)
    assert [f.shape[-1] for f in feats] == [64, 32, 16]
    assert n_params(model) == n_params(build_model(name, num_classes=200))


def test_resnet164_trains_one_step_in_channels_last_and_bf16():
    model = build_model("resnet164", num_classes=10).train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
