"""Two-stage detectors from torchvision (Faster R-CNN with an FPN), and the shared-RoI hook.

Every detector here is a torchvision ``FasterRCNN`` registered with ``kind="detector"``:

* ``model(images, targets)`` in train mode returns torchvision's four losses
  (``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``); in eval
  mode ``model(images)`` returns one dict per image (``boxes`` xyxy in pixels, ``scores``,
  ``labels``);
* ``images`` are B×3×H×W floats in [0, 1] (or a list of 3×H×W): the detector normalises them
  with the ImageNet mean and std and, unlike torchvision's default, **does not resize them**
  (:func:`keep_size_transform`): the data set resized its images once, so proposals, boxes and
  feature maps of every network of a method share one pixel frame;
* **num_classes counts the background**: ``build_model(name, num_classes=2)`` is one
  foreground class (a polyp) + background; labels are 1…num_classes − 1 and 0 is background
  (torchvision's convention; a detection data set's ``classes[0]`` is ``"background"``).

Names (any mix in one method: they share the box head's output shape, num_classes logits per
region):

- ``fasterrcnn_resnet50_fpn``: the teacher (ResNet-50-FPN, 41.4 M parameters with 2 classes);
- ``fasterrcnn_mobilenet_v3_large_fpn``: the students (MobileNetV3-Large-FPN, 19.0 M);
- ``…_coco``: the same with torchvision's COCO weights (``pretrained=True``; the box
  predictor is replaced by one with ``num_classes`` outputs). Weights come through
  torchvision's weight API and its cache (``$TORCH_HOME/hub/checkpoints``); offline and not
  cached, building one is a one-line :class:`WeightsNotFoundError` after at most
  :data:`DOWNLOAD_TIMEOUT` seconds, never a hang;
- ``fasterrcnn_tiny_resnet`` (a ResNet-18 cut after its third stage, 3.2 M) and
  ``fasterrcnn_tiny_cnn`` (six 3×3 convolutions, 0.22 M): CPU-sized, with an FPN of 32/48
  channels, small anchors (8–64 px), 32 sampled RoIs per image (RoIAlign with one sample per bin) and few proposals, for 64×64
  images (the smoke and lab profiles' synthetic polyps).

:func:`detector_pass` and :func:`box_head_logits` split torchvision's forward where
distillation needs it (METHODS.md §10): a network's sampled proposals can then be pooled
from every network's own features and classified by every network's own box head.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import socket
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from . import register_model

__all__ = [
    "DOWNLOAD_TIMEOUT",
    "DetectorPass",
    "WeightsNotFoundError",
    "box_head_logits",
    "detector_pass",
    "keep_size_transform",
]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DOWNLOAD_TIMEOUT = 30.0  # seconds without an answer before a weight download gives up


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not cached and could not be downloaded."""


@functools.cache
def keep_size_transform() -> type:
    """The class of torchvision's detection transform without the resize (normalise and batch
    only); built on first use, so that ``import kdlab`` does not import torchvision."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class KeepSizeTransform(GeneralizedRCNNTransform):
        """torchvision's ``GeneralizedRCNNTransform`` with ``resize`` the identity."""

        def resize(self, image, target=None):
            return image, target

    return KeepSizeTransform


def _keep_size(model: nn.Module) -> nn.Module:
    model.transform = keep_size_transform()(1, 1, IMAGENET_MEAN, IMAGENET_STD)
    return model


def _named(model: nn.Module, arch: str) -> nn.Module:
    model.arch = arch  # the registered name, as every kdlab network carries it
    return model


def _check_input(name: str, in_channels: int, options: dict) -> None:
    if in_channels != 3:
        raise ValueError(f"model {name!r} is a detector of RGB images: in_channels must be 3")
    if options:
        raise ValueError(f"model {name!r} has no option {sorted(options)[0]!r}")


# --------------------------------------------------------------------------- COCO weights
def _cached_weights(weights, name: str):
    """``weights`` once its file is in torch's hub cache: downloaded there with a timeout if
    absent; a one-line :class:`WeightsNotFoundError` where that fails."""
    url = weights.url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    target = folder / os.path.basename(urlparse(url).path)
    if target.exists():
        return weights
    match = re.search(r"-([a-f0-9]*)\.", target.name)
    previous = socket.getdefaulttimeout()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
        torch.hub.download_url_to_file(url, str(target), match.group(1) if match else None)
    except Exception as error:  # offline, refused, timed out, a bad checksum
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsNotFoundError(
            f"the COCO weights of {name} are not in {folder} and could not be downloaded "
            f"({reason}): put {url} there, or build it without them (pretrained=False)"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return weights


def _torchvision_detector(builder, weights_enum, name, num_classes, pretrained, **settings):
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    if not pretrained:
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **settings)
        return _keep_size(model)
    weights = _cached_weights(weights_enum.COCO_V1, name)
    model = builder(weights=weights, weights_backbone=None, **settings)
    head = model.roi_heads.box_predictor
    model.roi_heads.box_predictor = FastRCNNPredictor(head.cls_score.in_features, num_classes)
    return _keep_size(model)


@register_model("fasterrcnn_resnet50_fpn", kind="detector")
def fasterrcnn_resnet50_fpn(num_classes, in_channels=3, arch="", pretrained=False, **options):
    """torchvision's Faster R-CNN ResNet-50-FPN (COCO val2017 box mAP 37.0 with its weights),
    ``pretrained=True``: COCO weights, a new box predictor of ``num_classes`` outputs."""
    from torchvision.models.detection import (
        FasterRCNN_ResNet50_FPN_Weights,
        fasterrcnn_resnet50_fpn,
    )

    _check_input(arch, in_channels, options)
    model = _torchvision_detector(
        fasterrcnn_resnet50_fpn, FasterRCNN_ResNet50_FPN_Weights, arch, num_classes, pretrained
    )
    return _named(model, arch)


@register_model("fasterrcnn_mobilenet_v3_large_fpn", kind="detector")
def fasterrcnn_mobilenet_v3_large_fpn(
    num_classes, in_channels=3, arch="", pretrained=False, **options
):
    """torchvision's Faster R-CNN MobileNetV3-Large-FPN (COCO box mAP 32.8 with its weights);
    ``pretrained=True`` as for the teacher."""
    from torchvision.models.detection import (
        FasterRCNN_MobileNet_V3_Large_FPN_Weights,
        fasterrcnn_mobilenet_v3_large_fpn,
    )

    _check_input(arch, in_channels, options)
    model = _torchvision_detector(
        fasterrcnn_mobilenet_v3_large_fpn,
        FasterRCNN_MobileNet_V3_Large_FPN_Weights,
        arch,
        num_classes,
        pretrained,
    )
    return _named(model, arch)


@register_model("fasterrcnn_resnet50_fpn_coco", kind="detector")
def fasterrcnn_resnet50_fpn_coco(num_classes, in_channels=3, arch="", pretrained=True):
    """``fasterrcnn_resnet50_fpn`` with COCO weights (the name a grid or a checkpoint gives)."""
    return fasterrcnn_resnet50_fpn(num_classes, in_channels, arch, pretrained=pretrained)


@register_model("fasterrcnn_mobilenet_v3_large_fpn_coco", kind="detector")
def fasterrcnn_mobilenet_v3_large_fpn_coco(num_classes, in_channels=3, arch="", pretrained=True):
    """``fasterrcnn_mobilenet_v3_large_fpn`` with COCO weights."""
    return fasterrcnn_mobilenet_v3_large_fpn(num_classes, in_channels, arch, pretrained=pretrained)


# --------------------------------------------------------------------------- tiny, for a CPU
def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)
    )


def _tiny_cnn_body(widths=(16, 32, 64)) -> tuple[nn.Module, list[int]]:
    """Three stages of two 3×3 convolutions each, at strides 4, 8 and 16."""
    a, b, c = widths
    body = nn.Sequential(
        OrderedDict(
            s1=nn.Sequential(_conv(3, a, 2), _conv(a, a, 2)),
            s2=nn.Sequential(_conv(a, b, 2), _conv(b, b)),
            s3=nn.Sequential(_conv(b, c, 2), _conv(c, c)),
        )
    )
    return body, list(widths)


def _tiny_resnet_body() -> tuple[nn.Module, list[int]]:
    """torchvision's ResNet-18 up to its third stage (strides 4, 8, 16), randomly initialised."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    body = nn.Sequential(
        OrderedDict(
            s1=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),
            s2=net.layer2,
            s3=net.layer3,
        )
    )
    return body, [64, 128, 256]


def _tiny_detector(body, channels, num_classes, fpn: int, representation: int) -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    backbone = BackboneWithFPN(body, {"s1": "0", "s2": "1", "s3": "2"}, channels, fpn)
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,)), ((0.5, 1.0, 2.0),) * 4)
    model = FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 1),
        box_head=TwoMLPHead(fpn * 49, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        rpn_pre_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_train=100,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=32,
        box_detections_per_img=20,
    )
    return _keep_size(model)


def _no_weights(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"model {name!r} has no pretrained weights; use pretrained=False")


@register_model("fasterrcnn_tiny_resnet", kind="detector")
def fasterrcnn_tiny_resnet(num_classes, in_channels=3, arch="", pretrained=False, **options):
    """The CPU teacher: a ResNet-18 cut after its third stage, FPN of 48 channels, a box head
    of 128 (3.2 M parameters)."""
    _check_input(arch, in_channels, options)
    _no_weights(arch, pretrained)
    model = _tiny_detector(*_tiny_resnet_body(), num_classes, fpn=48, representation=128)
    return _named(model, arch)


@register_model("fasterrcnn_tiny_cnn", kind="detector")
def fasterrcnn_tiny_cnn(num_classes, in_channels=3, arch="", pretrained=False, **options):
    """The CPU student: six 3×3 convolutions (16, 32, 64 channels), FPN of 32 channels, a box
    head of 64 (0.2 M parameters)."""
    _check_input(arch, in_channels, options)
    _no_weights(arch, pretrained)
    model = _tiny_detector(*_tiny_cnn_body(), num_classes, fpn=32, representation=64)
    return _named(model, arch)


# --------------------------------------------------------------------------- the shared-RoI hook
@dataclasses.dataclass
class DetectorPass:
    """One detector's training forward up to its box head, on one batch.

    ``image_sizes``: (H, W) of every image as the detector sees it; ``features``: its FPN maps;
    ``losses``: the RPN's ``loss_objectness`` and ``loss_rpn_box_reg``; ``proposals``: the
    RoIs its box head is trained on this batch (the RPN's proposals and the ground-truth boxes,
    sampled to ``box_batch_size_per_image`` per image, a quarter positive at most), one R_b×4
    tensor per image, with their ``labels`` (0: background, IoU < 0.5 with every object) and
    ``regression_targets``. Without sampling (a frozen teacher) the last four are empty.
    """

    image_sizes: list[tuple[int, int]]
    features: OrderedDict
    losses: dict[str, torch.Tensor]
    proposals: list[torch.Tensor]
    labels: list[torch.Tensor]
    regression_targets: list[torch.Tensor]


def detector_pass(model: nn.Module, images, targets, sample: bool = True) -> DetectorPass:
    """Transform, backbone and (``sample``) RPN and RoI sampling of a torchvision two-stage
    detector in train mode; ``sample=False`` stops after the backbone."""
    image_list, targets = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    if not sample:
        return DetectorPass(image_list.image_sizes, features, {}, [], [], [])
    proposals, losses = model.rpn(image_list, features, targets)
    heads = model.roi_heads
    proposals, _, labels, regression = heads.select_training_samples(proposals, targets)
    return DetectorPass(image_list.image_sizes, features, losses, proposals, labels, regression)


def box_head_logits(
    model: nn.Module, features: OrderedDict, image_sizes, boxes: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s class logits (R×C) and box deltas (R×4C) for the regions ``boxes`` (one
    R_b×4 tensor per image, xyxy in the detector's pixel frame), pooled from ``features``
    (its own FPN maps) by its own RoIAlign and read by its own box head; rows in image order."""
    heads = model.roi_heads
    pooled = heads.box_roi_pool(features, boxes, image_sizes)
    return heads.box_predictor(heads.box_head(pooled))
