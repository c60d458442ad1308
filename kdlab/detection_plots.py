"""Figures for detection (notebook 09): boxes over images, and per-region soft targets.

Every function returns a matplotlib Figure (no pyplot, no screen), so a widget and a headless
run draw the same thing (:mod:`kdlab.live`). Ground truth is drawn in green, dashed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ["detections_figure", "region_targets", "region_targets_figure"]

TRUTH = "#2ca02c"


def _image(ax, image: torch.Tensor) -> None:
    """A 3×H×W image, uint8 or float in [0, 1]."""
    array = image.detach().cpu()
    array = array.float() / 255 if array.dtype == torch.uint8 else array.float()
    ax.imshow(array.clamp(0, 1).permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def _box(ax, box: Sequence[float], color: str, style: str = "-", text: str = "") -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                           linestyle=style, linewidth=1.4))  # fmt: skip
    if text:
        ax.text(x1, y1, text, color="white", fontsize=6, va="bottom",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 0.5})  # fmt: skip


def detections_figure(
    images: torch.Tensor,
    targets: Sequence[Mapping[str, torch.Tensor]],
    detections: Mapping[str, Sequence[Mapping[str, torch.Tensor]]],
    score_threshold: float = 0.5,
    title: str = "",
) -> Figure:
    """One row per image, one column per network: its boxes with a score ≥ ``score_threshold``
    (score printed on each) over the image, the ground truth dashed green in every panel.

    ``detections``: by network name (e.g. teacher, student1, student2, ensemble), one dict per
    image (``boxes``, ``scores``); an empty mapping draws the images and their boxes only.
    """
    columns = list(detections) or ["ground truth"]
    rows = len(images)
    shape = (rows, len(columns)) if detections else (1, rows)  # no detections: one row
    fig = Figure(figsize=(1.9 * shape[1], 1.9 * shape[0] + 0.4), layout="constrained")
    axes = fig.subplots(*shape, squeeze=False)
    for r in range(rows):
        for c, name in enumerate(columns):
            ax = axes[r][c] if detections else axes[0][r]
            _image(ax, images[r])
            for box in targets[r]["boxes"]:
                _box(ax, box, TRUTH, "--")
            if name in detections:
                found = detections[name][r]
                for box, score in zip(found["boxes"], found["scores"]):
                    if score >= score_threshold:
                        _box(ax, box, f"C{c}", text=f"{float(score):.2f}")
            if r == 0 or not detections:
                ax.set_title(name if detections else f"image {r}", fontsize=9)
    fig.suptitle(title or f"boxes with score ≥ {score_threshold:g}; ground truth dashed green",
                 fontsize=9)  # fmt: skip
    return fig


def region_targets(method, images: torch.Tensor, targets, owner: str = "student1", image: int = 0):
    """The regions ``owner`` samples on ``images[image]`` this batch and every network's class
    logits on them: ``{"regions": R×4, "labels": R, "logits": {network: R×C}}``.

    One call of the method's :meth:`forward_regions` in train mode (RoI sampling is a training
    step's) without a graph, on a copy of the method (train mode would move its BatchNorm
    statistics); the sampling draws from torch's global generator.
    """
    method = copy.deepcopy(method).train()
    with torch.no_grad():
        passes, logits, _ = method.forward_regions(images, targets)
    counts = [len(b) for b in passes[owner].proposals]
    start, stop = sum(counts[:image]), sum(counts[: image + 1])
    return {
        "regions": passes[owner].proposals[image].cpu(),
        "labels": passes[owner].labels[image].cpu(),
        "logits": {name: z[owner][start:stop].float().cpu() for name, z in logits.items()},
    }


def region_targets_figure(
    image: torch.Tensor,
    found: Mapping,
    temperature: float = 4.0,
    count: int = 6,
    owner: str = "student1",
    truth: torch.Tensor | None = None,
) -> Figure:
    """``count`` of ``owner``'s regions over the image (numbered; positives — IoU ≥ 0.5 with an
    object — first), and for each the probability of the class ``polyp`` (index 1) that every
    network gives it: the teacher and ``owner`` softened at ``temperature`` (the KD term's
    p^T), the peers at T = 1 (the ML term's). ``found``: :func:`region_targets`' result."""
    labels = found["labels"]
    order = torch.cat([torch.nonzero(labels > 0).flatten(), torch.nonzero(labels == 0).flatten()])
    shown = order[: min(count, len(order))]
    fig = Figure(figsize=(8.4, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.5])
    _image(left, image)
    for box in [] if truth is None else truth:
        _box(left, box, TRUTH, "--")
    for k, index in enumerate(shown.tolist()):
        color = "C3" if labels[index] > 0 else "C0"
        _box(left, found["regions"][index], color, text=str(k + 1))
    left.set_title(f"{owner}'s sampled regions (red: polyp, blue: background)", fontsize=8)
    names = list(found["logits"])
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        t = temperature if name in ("teacher", owner) else 1.0
        p = F.softmax(found["logits"][name][shown] / t, dim=1)[:, 1]
        xs = [k + (j - (len(names) - 1) / 2) * width for k in range(len(shown))]
        right.bar(xs, p.tolist(), width, label=f"{name} (T = {t:g})", color=f"C{j}")
    right.set_xticks(range(len(shown)), [str(k + 1) for k in range(len(shown))])
    right.set_xlabel("region")
    right.set_ylim(0, 1)
    right.set_ylabel("p(polyp)")
    right.set_title("per-region soft targets", fontsize=9)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
