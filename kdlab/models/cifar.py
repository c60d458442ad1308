"""The CIFAR-sized networks: ResNets, wide ResNets, a MobileNet for 32×32 and small CNNs.

All of them share the interface of :mod:`kdlab.models` and end in global adaptive average
pooling, so any input of at least 8x8 pixels works (8x8 grayscale digits, 28x28 MNIST-style
images, 32x32 CIFAR images, ...). They use no in-place operation on a tensor that autograd or
the returned feature list still needs, so they can be trained under ``torch.autocast`` and in
``channels_last`` memory format. For pre-activation networks the last feature map is taken after
the final BN + ReLU.

The architectures:

``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``, ``resnet110``
    CIFAR ResNets of He et al. (2016, section 4.2), depth ``6n + 2``, stages of 16/32/64
    channels, parameter-free (option A) shortcuts. About 0.27 M to 1.7 M parameters.
``resnet8x4``, ``resnet32x4``
    The 4x wider CIFAR ResNets common in distillation benchmarks: stem of 32 channels, stages of
    64/128/256 channels, 1x1 convolution + BN projection shortcuts.
``wrn_<depth>_<width>``
    Wide ResNets of Zagoruyko & Komodakis (2016), e.g. ``wrn_16_2``, ``wrn_40_2``, ``wrn_28_10``.
``mobilenet``
    MobileNet v1 (Howard et al., 2017) with depthwise-separable convolutions, adapted to 32x32
    inputs.
``cnn``, ``cnn_small``, ``cnn_tiny``
    Three-stage plain CNNs of width 32, 16 and 8 that train in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model, register_pattern

# ---------------------------------------------------------------------------
# Shared skeleton
# ---------------------------------------------------------------------------


class _StagedNet(nn.Module):
    """``stem -> stages -> head_act -> global average pool -> linear``.

    ``head_act`` is applied to the output of the last stage (the final BN + ReLU of
    pre-activation networks; an identity otherwise), and the result is what the last entry of
    the feature list holds.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: list[nn.Module],
        stage_channels: list[int],
        num_classes: int,
        arch: str,
        head_act: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if len(stages) != len(stage_channels):
            raise ValueError("one channel count is needed per stage")
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head_act = head_act if head_act is not None else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.stage_channels: list[int] = list(stage_channels)
        self.feature_dim: int = stage_channels[-1]
        self.num_classes: int = num_classes
        self.arch: str = arch
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        _init_weights(self)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)
        features: list[torch.Tensor] = []
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == last:
                x = self.head_act(x)
            features.append(x)
        embedding = torch.flatten(self.pool(x), 1)
        logits = self.classifier(embedding)
        if return_features:
            return logits, features
        return logits


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions, BN weight 1 and bias 0 (linear layers keep PyTorch's init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        _conv3x3(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


# ---------------------------------------------------------------------------
# CIFAR ResNets (post-activation basic blocks)
# ---------------------------------------------------------------------------


class _ZeroPadShortcut(nn.Module):
    """Option A shortcut of He et al.: subsample by ``stride`` and append zero channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError("a zero-padding shortcut cannot reduce the channel count")
        self.extra = out_ch - in_ch
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


class _BasicBlock(nn.Module):
    """``conv3x3-BN-ReLU-conv3x3-BN``, plus shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        if stride == 1 and in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _ZeroPadShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out-of-place add: ``x`` may be the previous stage's output, which the caller keeps.
        return self.relu2(out + self.shortcut(x))


def _cifar_resnet(
    depth: int,
    num_classes: int,
    in_channels: int,
    arch: str,
    stem_channels: int = 16,
    widths: tuple[int, int, int] = (16, 32, 64),
    shortcut: str = "A",
) -> _StagedNet:
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    n = (depth - 2) // 6
    stem = _conv_bn_relu(in_channels, stem_channels)
    stages: list[nn.Module] = []
    ch = stem_channels
    for i, width in enumerate(widths):
        blocks = []
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            blocks.append(_BasicBlock(ch, width, stride, shortcut))
            ch = width
        stages.append(nn.Sequential(*blocks))
    return _StagedNet(stem, stages, list(widths), num_classes, arch)


def _resnet_builder(depth: int) -> Callable[[int, int, str], _StagedNet]:
    """He et al.'s CIFAR ResNet with option A (zero-padding identity) shortcuts.

    With option A the parameter counts for 10 classes are 0.27 M (resnet20), 0.46 M (resnet32),
    0.66 M (resnet44), 0.85 M (resnet56) and 1.7 M (resnet110), the numbers of the paper's
    Table 6 (resnet20 has 269,722). The 1x1 conv + BN projection shortcut used by some
    distillation code bases adds 2,752 parameters, which rounds resnet32 to 0.47 M and resnet56
    to 0.86 M instead, so option A is used here.
    """

    def build(num_classes: int, in_channels: int, arch: str) -> _StagedNet:
        return _cifar_resnet(depth, num_classes, in_channels, arch)

    build.__doc__ = _resnet_builder.__doc__
    return build


def _resnet_x4_builder(depth: int) -> Callable[[int, int, str], _StagedNet]:
    """4x wide CIFAR ResNet: stem of 32 channels, stages of 64/128/256, projection shortcuts."""

    def build(num_classes: int, in_channels: int, arch: str) -> _StagedNet:
        return _cifar_resnet(
            depth,
            num_classes,
            in_channels,
            arch,
            stem_channels=32,
            widths=(64, 128, 256),
            shortcut="B",
        )

    build.__doc__ = _resnet_x4_builder.__doc__
    return build


# ---------------------------------------------------------------------------
# Wide ResNets (pre-activation basic blocks)
# ---------------------------------------------------------------------------


class _PreActBlock(nn.Module):
    """``BN-ReLU-conv3x3-BN-ReLU-conv3x3`` plus shortcut (1x1 conv when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.equal_in_out = stride == 1 and in_ch == out_ch
        self.shortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        # As in the reference implementation, a projection shortcut sees the activated input.
        identity = x if self.shortcut is None else self.shortcut(act)
        return out + identity


def _wide_resnet(
    depth: int, width: int, num_classes: int, in_channels: int, arch: str
) -> _StagedNet:
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"Wide ResNet depth must satisfy (depth - 4) % 6 == 0 with depth >= 10, got {depth}"
        )
    if width < 1:
        raise ValueError(f"Wide ResNet width must be >= 1, got {width}")
    n = (depth - 4) // 6
    widths = [16 * width, 32 * width, 64 * width]
    stem = _conv3x3(in_channels, 16)
    stages: list[nn.Module] = []
    ch = 16
    for i, w in enumerate(widths):
        blocks = []
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            blocks.append(_PreActBlock(ch, w, stride))
            ch = w
        stages.append(nn.Sequential(*blocks))
    head_act = nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU(inplace=True))
    return _StagedNet(stem, stages, widths, num_classes, arch, head_act=head_act)


# ---------------------------------------------------------------------------
# MobileNet v1 for 32x32 inputs
# ---------------------------------------------------------------------------


def _depthwise_separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 conv-BN-ReLU followed by pointwise 1x1 conv-BN-ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, kernel_size=3, stride=stride, padding=1, groups=in_ch, bias=False),
        nn.BatchNorm2d(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


# (out_channels, stride) of the 13 depthwise-separable layers, grouped into 4 stages. The
# ImageNet network downsamples 32x; here the stem has stride 1, so a 32x32 input is reduced
# to 16x16, 8x8, 4x4 and 2x2 at the ends of the four stages.
_MOBILENET_STAGES: list[list[tuple[int, int]]] = [
    [(64, 1), (128, 2), (128, 1)],
    [(256, 2), (256, 1)],
    [(512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1)],
    [(1024, 2), (1024, 1)],
]


def _mobilenet(num_classes: int, in_channels: int, arch: str) -> _StagedNet:
    stem = _conv_bn_relu(in_channels, 32, stride=1)
    stages: list[nn.Module] = []
    channels: list[int] = []
    ch = 32
    for spec in _MOBILENET_STAGES:
        layers = []
        for out_ch, stride in spec:
            layers.append(_depthwise_separable(ch, out_ch, stride))
            ch = out_ch
        stages.append(nn.Sequential(*layers))
        channels.append(ch)
    return _StagedNet(stem, stages, channels, num_classes, arch)


# ---------------------------------------------------------------------------
# Small plain CNNs
# ---------------------------------------------------------------------------


def _simple_cnn_builder(width: int) -> Callable[[int, int, str], _StagedNet]:
    """Three stages of conv3x3-BN-ReLU with ``w``, ``2w``, ``4w`` channels, 2x2 max-pool between."""

    def build(num_classes: int, in_channels: int, arch: str) -> _StagedNet:
        widths = [width, 2 * width, 4 * width]
        stages: list[nn.Module] = [
            _conv_bn_relu(in_channels, widths[0]),
            nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(widths[0], widths[1])),
            nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(widths[1], widths[2])),
        ]
        return _StagedNet(nn.Identity(), stages, widths, num_classes, arch)

    build.__doc__ = _simple_cnn_builder.__doc__
    return build


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

for _name, _build in {
    "cnn": _simple_cnn_builder(32),
    "cnn_small": _simple_cnn_builder(16),
    "cnn_tiny": _simple_cnn_builder(8),
    "mobilenet": _mobilenet,
    "resnet20": _resnet_builder(20),
    "resnet32": _resnet_builder(32),
    "resnet44": _resnet_builder(44),
    "resnet56": _resnet_builder(56),
    "resnet110": _resnet_builder(110),
    "resnet8x4": _resnet_x4_builder(8),
    "resnet32x4": _resnet_x4_builder(32),
}.items():
    register_model(_name)(_build)


def _wrn_rule(match) -> str | None:
    depth = int(match.group(1))
    if depth < 10 or (depth - 4) % 6 != 0:
        return (
            f"Wide ResNet depth {depth}: (depth - 4) must be a positive multiple of 6, "
            "e.g. 10, 16, 22, 28, 40"
        )
    return None


@register_pattern("wrn_<depth>_<width>", r"wrn_([1-9][0-9]*)_([1-9][0-9]*)", check=_wrn_rule)
def _wrn(match, num_classes: int, in_channels: int, arch: str) -> _StagedNet:
    """Wide ResNet ``wrn_<depth>_<width>`` (depth ``6n + 4``, ``n >= 1``; width ``>= 1``)."""
    return _wide_resnet(int(match.group(1)), int(match.group(2)), num_classes, in_channels, arch)
