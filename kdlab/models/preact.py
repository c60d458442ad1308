"""Pre-activation bottleneck ResNets for CIFAR-sized inputs: ``resnet164``.

He, Zhang, Ren, Sun, "Identity mappings in deep residual networks" (ECCV 2016), the CIFAR
network of their Table 2: depth ``9n + 2`` (n = 18 for 164), a 3×3 stem of 16 channels, three
stages of n bottleneck blocks with 16, 32 and 64 channels inside and 4× as many out (64, 128,
256), stride 2 at the first block of stages 2 and 3, a final BN + ReLU, global average pooling
and a linear classifier. A block is ``BN-ReLU-conv1×1 → BN-ReLU-conv3×3 (stride) →
BN-ReLU-conv1×1`` plus the shortcut: the identity, or, where the shape changes (the first block
of each stage), a 1×1 convolution of the pre-activated input, as in the authors' code.

Parameters: 1,703,258 for 10 classes (1.70 M, the paper's "1.7M"), 1,726,388 for 100 classes.
TADML's Table 7 lists ResNet-164 with "2.6": that is not this network. It fits the other
network a depth of 164 names, a plain CIFAR ResNet of basic blocks (depth ``6n + 2``, n = 27,
the family of :mod:`.cifar`'s resnet20…110 with option-A shortcuts): 2,602,906 parameters for
10 classes, 2.60 M (tests/test_table7_models.py counts both). The kit builds the pre-activation
bottleneck network, the ResNet-164 of the CIFAR literature, as its name.

Inputs: any size from 8×8; the stem has stride 1 and the classifier reads a global average
pool, so at 64×64 (Tiny-ImageNet) the stage maps are 64, 32 and 16 pixels wide, 4× the area
and about 4× the compute of 32×32, with the same parameters (the choice of the CIFAR networks
of :mod:`.cifar` too; a stride-2 stem would keep CIFAR's map sizes instead).
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_model
from .cifar import _StagedNet

__all__ = ["preact_resnet"]


class _PreActBottleneck(nn.Module):
    """``BN-ReLU-conv1×1, BN-ReLU-conv3×3 (stride), BN-ReLU-conv1×1`` plus the shortcut."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, kernel_size=1, bias=False)
        self.relu = nn.ReLU()  # not in place: the block's input is the previous stage's feature
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)
            if stride != 1 or in_ch != out_ch
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        identity = x if self.shortcut is None else self.shortcut(act)
        return out + identity


def preact_resnet(depth: int, num_classes: int, in_channels: int, arch: str) -> _StagedNet:
    """The pre-activation bottleneck ResNet of depth ``9n + 2`` (module docstring)."""
    if (depth - 2) % 9 != 0 or depth < 11:
        raise ValueError(f"pre-activation bottleneck ResNet depth must be 9n + 2, got {depth}")
    n = (depth - 2) // 9
    stem = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
    stages: list[nn.Module] = []
    ch = 16
    for i, planes in enumerate((16, 32, 64)):
        blocks = []
        for j in range(n):
            blocks.append(_PreActBottleneck(ch, planes, 2 if (i > 0 and j == 0) else 1))
            ch = planes * _PreActBottleneck.expansion
        stages.append(nn.Sequential(*blocks))
    head_act = nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU())
    return _StagedNet(stem, stages, [64, 128, 256], num_classes, arch, head_act=head_act)


@register_model("resnet164")
def resnet164(num_classes: int, in_channels: int, arch: str) -> _StagedNet:
    """Pre-activation bottleneck ResNet-164 (He et al. 2016, Identity mappings): 1.70 M
    parameters for 10 classes (module docstring, and Table 7's "2.6")."""
    return preact_resnet(164, num_classes, in_channels, arch)
