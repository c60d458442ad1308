"""Static figures the notebooks draw (each returns a matplotlib Figure; no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from .data import ImageDataset
from .multirun import accuracy_bars, accuracy_points, palette, training_curves

__all__ = [
    "example_grid",
    "soft_targets",
    "accuracy_points",
    "accuracy_bars",
    "training_curves",
    "palette",
    "logit_losses",
]


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


# --------------------------------------------------------------------------- beyond Hinton


def _teacher_distributions(ax, z_t, label, names, temperature, ls_temperature) -> None:
    from .losses import standardize_logits

    p_t = F.softmax(z_t / temperature, dim=0).numpy()
    p_std = F.softmax(standardize_logits(z_t[None])[0] / ls_temperature, dim=0).numpy()
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], p_t, 0.4, label=f"p_t^T, T = {temperature:g}")
    ax.bar([x + 0.2 for x in xs], p_std, 0.4, label=f"standardised, T = {ls_temperature:g}")
    ax.set_xticks(list(xs), [n[:6] for n in names], fontsize=7)
    ax.get_xticklabels()[label].set_fontweight("bold")
    ax.set_ylabel("probability")
    ax.legend(fontsize=7)


def _stacked(ax, bars: Mapping[str, Mapping[str, float]]) -> None:
    """One stacked bar per key, each part labelled, the total on top."""
    for col, parts in enumerate(bars.values()):
        bottom = 0.0
        for k, (term, value) in enumerate(parts.items()):
            ax.bar(col, value, bottom=bottom, color=f"C{k + 2}", alpha=0.8)
            ax.text(col, bottom + value / 2, term, ha="center", va="center", fontsize=7)
            bottom += value
        ax.text(col, bottom, f"{bottom:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(bars)), list(bars), fontsize=8)


def logit_losses(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    index: int = 0,
    *,
    kd: tuple[float, float] = (0.9, 4.0),
    dkd: tuple[float, float, float] = (1.0, 8.0, 4.0),
    dist: tuple[float, float, float] = (2.0, 2.0, 4.0),
    ls: tuple[float, float] = (9.0, 2.0),
) -> Figure:
    """What KD, DKD, DIST and KD with logit standardisation ask of a student (METHODS.md §7).

    ``student_logits`` and ``teacher_logits`` (B × C) and ``labels`` (B) are a batch of test
    outputs; ``kd = (α, T)``, ``dkd = (α, β, T)``, ``dist = (β, γ, T)``, ``ls = (weight, T)``.
    Left: for sample ``index``, the teacher's ``p_t^T`` at DKD's T beside its standardised
    ``p̃_t^T`` at the LS base temperature. Middle: that sample's DKD terms weighted as KD
    weighs them implicitly (α_KD · (TCKD + (1 − p_t,gt) · NCKD), at DKD's T) and as DKD
    does (α · TCKD + β · NCKD). Right: each method's weighted distillation term on the batch
    (what it adds to the loss, split into its named terms) beside the batch's cross-entropy.
    Every value comes from :mod:`kdlab.losses`.
    """
    from .losses import cross_entropy, dist_terms, dkd_terms, kd_loss, logit_std_kd_loss

    z_s, z_t = student_logits.detach().float().cpu(), teacher_logits.detach().float().cpu()
    y = labels.detach().cpu()
    label = int(y[index])
    tckd, nckd = dkd_terms(z_s, z_t, y, dkd[2], reduction="none")
    non_target = 1 - float(F.softmax(z_t[index] / dkd[2], dim=0)[label])
    inter, intra = dist_terms(z_s, z_t, dist[2])

    fig = Figure(figsize=(13.5, 3.4), layout="constrained")
    ax_p, ax_dkd, ax_all = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2.2, 1.3, 2.0]})
    _teacher_distributions(ax_p, z_t[index], label, classes, dkd[2], ls[1])
    ax_p.set_title(f"the teacher on test sample {index} (label {classes[label]})", fontsize=9)
    t, n = float(tckd[index]), float(nckd[index])
    _stacked(
        ax_dkd,
        {
            f"KD: α·(1, {non_target:.2f})": {"TCKD": kd[0] * t, "NCKD": kd[0] * non_target * n},
            f"DKD: ({dkd[0]:g}, {dkd[1]:g})": {"TCKD": dkd[0] * t, "NCKD": dkd[1] * n},
        },
    )
    ax_dkd.set_title(f"sample {index}: TCKD and NCKD, weighted", fontsize=9)
    _stacked(
        ax_all,
        {
            "KD": {"KL": kd[0] * float(kd_loss(z_s, z_t, kd[1]))},
            "DKD": {"TCKD": dkd[0] * float(tckd.mean()), "NCKD": dkd[1] * float(nckd.mean())},
            "DIST": {"inter": dist[0] * float(inter), "intra": dist[1] * float(intra)},
            "LS": {"KL": ls[0] * float(logit_std_kd_loss(z_s, z_t, ls[1]))},
        },
    )
    ce = float(cross_entropy(z_s, y))
    ax_all.axhline(ce, color="k", ls="--", lw=1, label=f"CE = {ce:.2f}")
    ax_all.set_title(f"weighted distillation term, batch of {len(y)}", fontsize=9)
    ax_all.legend(fontsize=7)
    return fig
