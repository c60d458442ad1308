"""The detection task: batches of images with box targets, scored by COCO-style mAP.

- **Batches**: ``(images, targets)`` from :class:`kdlab.data.boxes.DetectionLoader`: images
  B×3×H×W float32 in [0, 1] on the device, targets one dict per image (``boxes`` n×4 xyxy
  pixels, ``labels`` n int64 ≥ 1); the training loader flips images and boxes left–right.
- **Metrics** (:func:`evaluate`), per network and for the ensemble, in percent:
  ``map/<name>``, COCO's mAP@[.5:.95] (AP averaged over the IoU thresholds 0.50, 0.55, …, 0.95
  and over classes, each AP the 101-point interpolated area under precision–recall, the 100
  best-scored detections of each image, all object sizes); ``map50/<name>``, the AP at IoU 0.5.
  Computed by torchmetrics' ``MeanAveragePrecision`` (backend faster-coco-eval, else
  pycocotools) on the detectors' outputs in eval mode (torchvision's score threshold 0.05 and
  per-class NMS at IoU 0.5 applied by the detector), in float32, without a graph.
- **The ensemble** (METHODS.md §10): the members' boxes of each image fused by weighted
  boxes fusion (Solovyev et al. 2021, the ``ensemble_boxes`` package, :func:`fuse_boxes`):
  boxes of the same label that overlap by IoU > ``iou_thr`` (0.55) — in practice boxes of
  different members, each detector having applied its own NMS at 0.5 — are merged into one
  whose corners are the boxes' corners averaged with their scores as weights and whose score
  is their mean score × min(boxes merged, M) / M, so a box found by one of M members keeps 1/M
  of its score. No box is dropped for a low score (``skip_box_thr`` 0: the detectors' own 0.05
  threshold applies).

Why not the mean softmax of classification: detectors do not output one distribution per
image, and their boxes differ, so the ensemble is a fusion of boxes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from . import Task, register_task

__all__ = ["Detection", "evaluate", "fuse_boxes", "mean_average_precision", "IOU_THR"]

IOU_THR = 0.55  # weighted boxes fusion: IoU above which two members' boxes are one object
SKIP_BOX_THR = 0.0  # weighted boxes fusion: member boxes below this score are ignored


@register_task
class Detection(Task):
    """Object detection with torchvision's two-stage detectors, scored by COCO mAP (percent);
    the ensemble fuses its members' boxes (:func:`fuse_boxes`)."""

    name = "detection"
    metric = "map"
    metric_label = "COCO mAP@[.5:.95] (%)"
    model_kind = "detector"
    # torchvision's detection transform copies every image into a new padded batch (NCHW).
    # Measured here (one thread, forward + backward, CPU time of two runs each): channels-last
    # weights and input gave 0.10–0.11 s against 0.11–0.14 s for the CPU teacher (8 images of
    # 64 px) and 4.41–4.57 s against 4.55–4.81 s for MobileNetV3-FPN (4 images of 320 px):
    # within the noise, so the standard layout is kept.
    channels_last = False

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("map", "map50")

    def loaders(self, dataset, config, device, *, channels_last: bool = False):
        """Training batches of ``config.batch_size`` images (shuffled, flipped); test batches
        of ``min(config.eval_batch_size, config.batch_size)`` (``eval_batch_size``'s default of
        1,024 is sized for 32×32 classification, not for detectors)."""
        from ..data.boxes import DetectionLoader

        train = DetectionLoader.train(dataset, config.batch_size, device, seed=config.seed)
        size = min(config.eval_batch_size, config.batch_size)
        return train, DetectionLoader.test(dataset, size, device)

    def evaluate(self, networks, test, ensemble=()):
        return evaluate(networks, test, ensemble)


def _metric():
    """A torchmetrics ``MeanAveragePrecision`` on the best installed COCO backend."""
    import importlib.util

    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError:
        raise ImportError(
            'detection metrics need torchmetrics: pip install "kdlab[detection]"'
        ) from None
    for backend, module in (
        ("faster_coco_eval", "faster_coco_eval"),
        ("pycocotools", "pycocotools"),
    ):
        if importlib.util.find_spec(module) is not None:
            metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=backend)
            # COCO keeps the 100 best-scored detections per image; the fused ensemble of two
            # detectors (100 each) often has more, which is no fault: no warning for it.
            metric.warn_on_many_detections = False
            return metric
    raise ImportError('detection metrics need faster-coco-eval: pip install "kdlab[detection]"')


def _cpu(detections: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: detections[k].detach().float().cpu() if k != "labels" else detections[k].cpu()
            for k in ("boxes", "scores", "labels") if k in detections}  # fmt: skip


def mean_average_precision(
    predictions: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Mapping[str, torch.Tensor]]
) -> dict[str, float]:
    """``{"map": …, "map50": …}`` in percent for one list of per-image predictions (``boxes``,
    ``scores``, ``labels``) against the targets (``boxes``, ``labels``): the rules of
    :mod:`kdlab.tasks.detection`."""
    metric = _metric()
    metric.update([_cpu(p) for p in predictions], [_cpu(t) for t in targets])
    return _percent(metric)


def _percent(metric) -> dict[str, float]:
    result = metric.compute()
    return {"map": 100 * float(result["map"]), "map50": 100 * float(result["map_50"])}


def fuse_boxes(
    members: Sequence[Mapping[str, torch.Tensor]],
    image_size: tuple[int, int],
    iou_thr: float = IOU_THR,
    skip_box_thr: float = SKIP_BOX_THR,
) -> dict[str, torch.Tensor]:
    """Weighted boxes fusion of one image's detections by several members (module docstring).

    ``members``: one dict per member (``boxes`` n×4 xyxy pixels, ``scores`` n, ``labels`` n);
    ``image_size``: (H, W) — the boxes are divided by (W, H, W, H) for ``ensemble_boxes``,
    which works in normalised coordinates, clipped to [0, 1], and multiplied back. Members
    weigh the same. Returns ``{"boxes", "scores", "labels"}`` on the CPU (float32, int64),
    highest score first.
    """
    try:
        from ensemble_boxes import weighted_boxes_fusion
    except ImportError:
        raise ImportError(
            'the ensemble of detectors needs ensemble-boxes: pip install "kdlab[detection]"'
        ) from None

    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes, scores, labels = [], [], []
    for member in members:
        boxes.append((member["boxes"].detach().float().cpu() / scale).clamp(0, 1).numpy())
        scores.append(member["scores"].detach().float().cpu().numpy())
        labels.append(member["labels"].cpu().numpy())
    if sum(len(b) for b in boxes) == 0:
        return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.int64)}  # fmt: skip
    fused, fused_scores, fused_labels = weighted_boxes_fusion(
        boxes, scores, labels, iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type="avg"
    )
    return {
        "boxes": torch.as_tensor(fused, dtype=torch.float32) * scale,
        "scores": torch.as_tensor(fused_scores, dtype=torch.float32),
        "labels": torch.as_tensor(fused_labels).round().to(torch.int64),
    }


@torch.no_grad()
def detect(networks: Mapping[str, nn.Module], images: torch.Tensor) -> dict[str, list[dict]]:
    """Every network's detections of ``images`` (eval mode, float32, no graph), by name; the
    networks are returned to their previous mode."""
    modes = {name: net.training for name, net in networks.items()}
    try:
        with torch.autocast(images.device.type, enabled=False):
            out = {}
            for name, net in networks.items():
                net.eval()
                out[name] = net(images.float())
            return out
    finally:
        for name, net in networks.items():
            net.train(modes[name])


def evaluate(
    networks: Mapping[str, nn.Module],
    batches: Iterable[tuple[torch.Tensor, Sequence[Mapping[str, torch.Tensor]]]],
    ensemble: Sequence[str] = (),
) -> dict[str, float]:
    """``map/<name>`` and ``map50/<name>`` (percent) of every network over ``batches``, and of
    the ensemble of the members named in ``ensemble`` (two or more: their boxes fused by
    :func:`fuse_boxes`). Float32, eval mode, no graph (:func:`detect`)."""
    metrics = {name: _metric() for name in networks}
    if len(ensemble) >= 2:
        metrics["ensemble"] = _metric()
    for images, targets in batches:
        found = detect(networks, images)
        truth = [_cpu(t) for t in targets]
        for name in networks:
            metrics[name].update([_cpu(d) for d in found[name]], truth)
        if len(ensemble) >= 2:
            size = tuple(images.shape[-2:])
            fused = [fuse_boxes([found[m][i] for m in ensemble], size) for i in range(len(truth))]
            metrics["ensemble"].update(fused, truth)
    record = {}
    for name, metric in metrics.items():
        values = _percent(metric)
        record[f"map/{name}"], record[f"map50/{name}"] = values["map"], values["map50"]
    return record
