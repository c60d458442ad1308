"""ImageNet-sized networks from timm and torchvision, with an identity classifier and stage
features (TADML Table 6's peers; METHODS.md §9).

The architectures come from the libraries, not written here; kdlab only regroups their modules
into ``stem → stages → global average pool → linear`` so they share the interface of
:mod:`kdlab.models` (``forward(x, return_features=True)``, ``stage_channels``,
``feature_dim``, ``arch``):

``mobilenetv1``
    MobileNetV1 (Howard et al., 2017), width 1.0: timm's ``mobilenetv1_100``. Stages at
    strides 2, 4, 8, 16, 32 with 64, 128, 256, 512, 1024 channels; 3.2 M parameters without
    the classifier.
``inceptionv1``
    GoogLeNet (Szegedy et al., 2015), Inception v1: torchvision's ``googlenet`` without its
    auxiliary heads. Stages: conv1 (64, stride 4), conv2–3 (192, stride 8), inception 3a–b
    (480, stride 8), 4a–e (832, stride 16), 5a–b (1024, stride 32); 5.6 M parameters. Its
    max-pools need inputs of 16×16 pixels or more (the others take 8×8).
``resnet50``
    ResNet-50 (He et al., 2016): torchvision's ``resnet50``. Stages layer1–4 (256, 512, 1024,
    2048 channels); 23.5 M parameters. A stronger peer or teacher.

``pretrained=True`` loads ImageNet weights through the library's own weight API (timm's
``pretrained=True`` from the Hugging Face hub; torchvision's ``weights=`` enum from the torch
hub), from its cache when they are there. Where they are not and cannot be downloaded
(offline, a blocked network), the build ends in one line, :class:`WeightsNotFoundError`,
within :data:`DOWNLOAD_TIMEOUT` seconds of silence from the network, never a hang. Only the
backbone is pretrained: the identity classifier is always new. With ``in_channels`` other than
3 the first convolution is rebuilt (pretrained: its weights summed over the colour channels).
"""

from __future__ import annotations

import contextlib
import socket

import torch
from torch import nn

from . import register_model

__all__ = ["ImageNetNet", "WeightsNotFoundError", "DOWNLOAD_TIMEOUT"]

DOWNLOAD_TIMEOUT = 30.0  # seconds without an answer before a weight download gives up


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not in the library's cache and could not be downloaded."""


class ImageNetNet(nn.Module):
    """``stem → stages → global average pool → linear`` over a library network's modules
    (weights untouched: the pretrained ones stay as loaded, the classifier is new)."""

    def __init__(
        self,
        stem: nn.Module,
        stages: list[nn.Module],
        stage_channels: list[int],
        num_classes: int,
        arch: str,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.stage_channels: list[int] = list(stage_channels)
        self.feature_dim: int = self.stage_channels[-1]
        self.num_classes: int = num_classes
        self.arch: str = arch
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)
        features: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        logits = self.classifier(torch.flatten(self.pool(x), 1))
        return (logits, features) if return_features else logits


@contextlib.contextmanager
def _weights(arch: str, cache: str):
    """Turn any failure to get ``arch``'s weights into one line, and bound every network wait
    (torch.hub's download has no timeout of its own)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        yield
    except (
        OSError,
        RuntimeError,
    ) as error:  # no network, a refused or partial download, a bad hash
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise WeightsNotFoundError(
            f"the ImageNet weights of {arch} are not in {cache} and could not be downloaded "
            f"({type(error).__name__}: {reason}); download them once with network, or build "
            f"it with pretrained=False"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """``conv`` taking ``in_channels`` inputs: itself for 3, else a new one whose weights are
    the old ones summed over the colour channels (and repeated, divided, for more than 1)."""
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, bias=conv.bias is not None)  # fmt: skip
    with torch.no_grad():
        summed = conv.weight.sum(1, keepdim=True)
        new.weight.copy_(summed.repeat(1, in_channels, 1, 1) / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


class _TransformInput(nn.Module):
    """GoogLeNet's ``transform_input``: its ImageNet weights expect ``(x − 0.5) / 0.5`` inputs;
    this maps ImageNet-normalised ones there (torchvision does it inside ``forward``)."""

    def __init__(self) -> None:
        super().__init__()
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        self.register_buffer("scale", (std / 0.5).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean - 0.5) / 0.5).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


@register_model("mobilenetv1")
def _mobilenetv1(num_classes: int, in_channels: int, arch: str, pretrained: bool = False):
    """timm's ``mobilenetv1_100`` (weights: ``mobilenetv1_100.ra4_e3600_r224_in1k``)."""
    timm = _library("timm", arch)
    from huggingface_hub import constants

    with _weights(arch, constants.HF_HUB_CACHE) if pretrained else contextlib.nullcontext():
        net = timm.create_model(
            "mobilenetv1_100", pretrained=pretrained, num_classes=0, in_chans=in_channels
        )
    stages = list(net.blocks)
    channels = [int(info["num_chs"]) for info in net.feature_info]
    return ImageNetNet(nn.Sequential(net.conv_stem, net.bn1), stages, channels, num_classes, arch)


@register_model("inceptionv1")
def _inceptionv1(num_classes: int, in_channels: int, arch: str, pretrained: bool = False):
    """torchvision's ``googlenet`` (weights: ``GoogLeNet_Weights.IMAGENET1K_V1``)."""
    models = _library("torchvision.models", arch)
    # With weights torchvision builds the auxiliary heads to load them, then drops them.
    options = {} if pretrained else {"aux_logits": False, "init_weights": True}
    net = _torchvision(models.googlenet, models.GoogLeNet_Weights, arch, pretrained, **options)
    net.conv1.conv = _first_conv(net.conv1.conv, in_channels)
    stem = _TransformInput() if net.transform_input and in_channels == 3 else nn.Identity()
    stages = [
        nn.Sequential(net.conv1, net.maxpool1),
        nn.Sequential(net.conv2, net.conv3, net.maxpool2),
        nn.Sequential(net.inception3a, net.inception3b),
        nn.Sequential(net.maxpool3, net.inception4a, net.inception4b, net.inception4c,
                      net.inception4d, net.inception4e),
        nn.Sequential(net.maxpool4, net.inception5a, net.inception5b),
    ]  # fmt: skip
    return ImageNetNet(stem, stages, [64, 192, 480, 832, 1024], num_classes, arch)


@register_model("resnet50")
def _resnet50(num_classes: int, in_channels: int, arch: str, pretrained: bool = False):
    """torchvision's ``resnet50`` (weights: ``ResNet50_Weights.IMAGENET1K_V2``)."""
    models = _library("torchvision.models", arch)
    net = _torchvision(models.resnet50, models.ResNet50_Weights, arch, pretrained)
    stem = nn.Sequential(_first_conv(net.conv1, in_channels), net.bn1, net.relu, net.maxpool)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    return ImageNetNet(stem, stages, [256, 512, 1024, 2048], num_classes, arch)


def _torchvision(build, weights_enum, arch: str, pretrained: bool, **options) -> nn.Module:
    """``build(weights=…)`` with the enum's default ImageNet weights when ``pretrained``."""
    if not pretrained:
        return build(weights=None, **options)
    with _weights(arch, f"{torch.hub.get_dir()}/checkpoints"):
        return build(weights=weights_enum.DEFAULT, **options)


def _library(module: str, arch: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise ValueError(
            f"model {arch!r} needs {package}: pip install {package} (or kdlab[imagenet])"
        ) from None
