"""Static figures the notebooks draw (each returns a matplotlib Figure; no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from .data import ImageDataset

__all__ = ["example_grid", "soft_targets", "accuracy_bars"]


def _as_image(x: torch.Tensor):
    """C×H×W uint8 → what imshow takes (H×W for one channel, H×W×3 otherwise)."""
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def example_grid(dataset: ImageDataset, per_class: int = 8, max_classes: int = 10) -> Figure:
    """A grid of training images: one row per class (the first ``max_classes`` classes)."""
    classes = list(range(min(dataset.num_classes, max_classes)))
    fig = Figure(figsize=(per_class * 0.75 + 1.5, len(classes) * 0.75), layout="constrained")
    axes = fig.subplots(len(classes), per_class, squeeze=False)
    for row, c in enumerate(classes):
        idx = (dataset.train_labels == c).nonzero().flatten()[:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(idx):
                ax.imshow(_as_image(dataset.train_images[idx[col]]), cmap="gray_r")
            if col == 0:
                ax.set_ylabel(dataset.classes[c][:12], rotation=0, ha="right", va="center")
    fig.suptitle(f"{dataset.name}: {per_class} training images per class", fontsize=10)
    return fig


def soft_targets(
    image: torch.Tensor,
    label: int,
    teacher_logits: torch.Tensor,
    temperature: float,
    alpha: float,
    classes: Sequence[str],
) -> Figure:
    """One test image, its hard label, and the teacher's softened distribution ``p_t^T``.

    The right panel mixes the two targets with weight α on the soft one:
    ``(1 − α)·onehot(y) + α·p_t^T``. It is a picture of the two pulls, not the loss: the loss adds
    ``(1 − α)·CE`` on the student's ``p_s`` at T = 1 and ``α·T²·KL(sg p_t^T ‖ p_s^T)`` at
    temperature T (see :func:`kdlab.losses.kd_loss`), and its title says so.
    """
    p_t = F.softmax(teacher_logits.float() / temperature, dim=0).numpy()
    onehot = F.one_hot(torch.tensor(label), len(classes)).float().numpy()
    fig = Figure(figsize=(10, 2.8), layout="constrained")
    ax_img, ax_soft, ax_mix = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 2.2, 2.2]})
    ax_img.imshow(_as_image(image), cmap="gray_r")
    ax_img.set_title(f"label: {classes[label]}", fontsize=10)
    ax_img.axis("off")
    x = range(len(classes))
    ax_soft.bar(x, onehot, color="lightgray", label="hard label")
    ax_soft.bar(x, p_t, color="C0", alpha=0.8, label=f"teacher, T = {temperature:g}")
    ax_soft.set_ylim(0, 1.05)
    ax_soft.set_title("teacher's softened distribution $p_t^T$", fontsize=10)
    ax_soft.legend(fontsize=8)
    mix = (1 - alpha) * onehot + alpha * p_t
    ax_mix.bar(x, mix, color="C1")
    ax_mix.set_ylim(0, 1.05)
    ax_mix.set_title(
        f"(1 − α)·label + α·$p_t^T$, α = {alpha:g}\n"
        "a picture, not the loss: CE at T = 1, KL at T (× T²)",
        fontsize=9,
    )
    for ax in (ax_soft, ax_mix):
        ax.set_xticks(list(x), [c[:6] for c in classes], fontsize=7)
    return fig


def accuracy_bars(
    results: Mapping[str, Sequence[float]],
    title: str = "test accuracy (%)",
    published: Mapping[str, float] | None = None,
) -> Figure:
    """Mean accuracy per set-up with error bars (sample std over seeds) and every seed as a dot.

    ``published``: the papers' numbers for some set-ups, marked with a red line.
    """
    import statistics

    names = list(results)
    means = [statistics.mean(results[n]) for n in names]
    stds = [statistics.stdev(results[n]) if len(results[n]) > 1 else 0.0 for n in names]
    fig = Figure(figsize=(1.4 * len(names) + 2, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.bar(
        range(len(names)), means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(names))]
    )
    for i, n in enumerate(names):
        ax.plot([i] * len(results[n]), results[n], "k.", alpha=0.6)
        if published and n in published:
            ax.hlines(published[n], i - 0.4, i + 0.4, colors="red", label="published")
    low = min(min(v) for v in results.values())
    ax.set_ylim(max(0, low - 5), min(100, max(means) + max(stds) + 3))
    ax.set_xticks(range(len(names)), names, rotation=15)
    n_seeds = max(len(v) for v in results.values())
    ax.set_title(f"{title}; mean ± std over {n_seeds} seed(s)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig
