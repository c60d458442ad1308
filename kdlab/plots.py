"""Static figures the notebooks draw (each returns a matplotlib Figure; no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from .data import ImageDataset

__all__ = [
    "example_grid", "soft_targets", "accuracy_bars", "logit_losses", "teaching_graphs",
    "family_targets", "retrieval_examples", "identity_grid",
]  # fmt: skip


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


# --------------------------------------------------------------------------- online family

EDGE_STYLES = {  # kind → (colour, line style, legend text)
    "teaches": ("C3", "-", "teaches: a detached target of the learner's KL"),
    "builds": ("0.55", "--", "builds: part of a built teacher (gradient may flow)"),
    "ema": ("C2", ":", "ema: temporal mean, updated after each step"),
}


def _graph_layout(edges) -> dict[str, tuple[float, float]]:
    """Learners (networks the loop evaluates) on the bottom row; built teachers and temporal
    means (the target of a ``builds`` or ``ema`` arrow) on the top row."""
    import re

    def natural(name: str):  # branch2 before branch10
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    nodes = sorted({n for e in edges for n in (e.source, e.target)}, key=natural)
    built = {e.target for e in edges if e.kind in ("builds", "ema")}
    rows = [[n for n in nodes if n not in built], [n for n in nodes if n in built]]
    place = {}
    for y, row in enumerate(rows):
        for i, name in enumerate(row):
            place[name] = ((i + 0.5) / max(len(row), 1), float(y))
    return place


def _draw_graph(ax, edges, title: str) -> None:
    place = _graph_layout(edges)
    for e in edges:
        colour, style, _ = EDGE_STYLES.get(e.kind, EDGE_STYLES["teaches"])
        (x0, y0), (x1, y1) = place[e.source], place[e.target]
        bend = 0.35 if y0 == y1 else 0.08  # arcs between peers of one row stay apart
        ax.annotate(
            "", xy=(x1, y1), xytext=(x0, y0),
            arrowprops=dict(arrowstyle="-|>", color=colour, ls=style, lw=1.2, shrinkA=14,
                            shrinkB=14, connectionstyle=f"arc3,rad={bend}"),
        )  # fmt: skip
    for name, (x, y) in place.items():
        face = "#fde8c8" if y > 0 else "#dbe9f6"
        ax.text(x, y, name, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.3", fc=face, ec="0.4"))  # fmt: skip
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.45, 1.45)
    ax.axis("off")
    ax.set_title(title, fontsize=10)


def teaching_graphs(methods: Mapping[str, object], columns: int = 3) -> Figure:
    """Who learns from whom, one panel per method: the arrows of each method's
    :meth:`~kdlab.methods.Method.teaching_edges` (a method object, or its list of edges).

    Bottom row (blue): the networks the loop trains and evaluates; top row (orange): the
    teachers a method *builds* from them (a gated or averaged ensemble, an attention-weighted
    mix, a temporal mean). Red arrows are KL targets (detached), grey dashed ones the parts a
    teacher is built from, green dotted ones the temporal-mean copies.
    """
    from matplotlib.lines import Line2D

    names = list(methods)
    rows = -(-len(names) // columns)
    fig = Figure(figsize=(4.2 * min(columns, len(names)) + 2.6, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, min(columns, len(names)), squeeze=False).flatten()
    for ax, name in zip(axes, names):
        method = methods[name]
        edges = method.teaching_edges() if hasattr(method, "teaching_edges") else list(method)
        _draw_graph(ax, edges, name)
    for ax in axes[len(names) :]:
        ax.axis("off")
    handles = [Line2D([], [], color=c, ls=ls, label=text) for c, ls, text in EDGE_STYLES.values()]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return fig


def family_targets(
    logits: torch.Tensor,
    label: int,
    classes: Sequence[str],
    *,
    temperature: float = 3.0,
    gate: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
    epoch: int = 40,
    rampup: float = 80.0,
) -> Figure:
    """What the family asks branch 1 to match on one sample (METHODS.md §11), and when.

    ``logits``: m × C, one sample's outputs of m branches (or peers); ``gate``: ONE's m gate
    weights for it. Left: the ramp-up weight w(e) over the epochs, ``epoch`` marked. Right:
    branch 1's ``p^T`` beside the targets it is pulled to at temperature T — DML's other peers
    (one KL each), ONE's gated ensemble ``softmax(Σ g_i z_i / T)``, CL-ILR's mean of the other
    branches, KDCL's naive (mean) and minimum-logit teachers — each labelled with its
    ``T²·KL(target ‖ p_1^T)``, the term before w(e) multiplies it.
    """
    from .methods.base import rampup_weight
    from .methods.cl_ilr import others_mean
    from .methods.kdcl import build_teacher
    from .methods.one import gated_logits

    z = logits.detach().float().cpu()
    g = torch.tensor(list(gate), dtype=torch.float32)
    g = g / g.sum()
    y = torch.tensor([label])
    targets = {f"DML: branch {i + 1}": z[i] for i in range(1, len(z))}
    targets["ONE: gated ensemble"] = gated_logits(z[None], g[None])[0]
    targets["CL-ILR: mean of the others"] = others_mean(z[None])[0, 0]
    targets["KDCL: naive (mean)"] = build_teacher(z[:, None], y, "naive")[0]
    targets["KDCL: min-logit"] = build_teacher(z[:, None], y, "min_logit")[0]

    def soft(v: torch.Tensor) -> torch.Tensor:
        return F.softmax(v / temperature, dim=0)

    fig = Figure(figsize=(12.5, 3.4), layout="constrained")
    ax_w, ax_p = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 3]})
    span = int(max(2 * rampup, epoch, 10))
    ax_w.plot(range(1, span + 1), [rampup_weight(e, rampup) for e in range(1, span + 1)])
    ax_w.plot([epoch], [rampup_weight(epoch, rampup)], "o", color="C3")
    ax_w.set_title(f"w(e), ramp-up {rampup:g} epochs: w({epoch}) = "
                   f"{rampup_weight(epoch, rampup):.3f}", fontsize=9)  # fmt: skip
    ax_w.set_xlabel("epoch")
    ax_w.grid(alpha=0.3)
    p1 = soft(z[0])
    width = 0.8 / (len(targets) + 1)
    xs = torch.arange(z.shape[1], dtype=torch.float32)
    ax_p.bar(xs, p1, width, color="k", label="branch 1 (the learner)")
    for k, (name, t) in enumerate(targets.items(), 1):
        q = soft(t)
        kl = temperature**2 * float((q * (q.log() - p1.log())).sum())
        ax_p.bar(xs + k * width, q, width, label=f"{name}: T²·KL = {kl:.3f}")
    ax_p.set_xticks((xs + 0.4 - width / 2).tolist(), [c[:6] for c in classes], fontsize=7)
    ax_p.get_xticklabels()[label].set_fontweight("bold")
    ax_p.set_title(f"branch 1's targets at T = {temperature:g} (label in bold)", fontsize=9)
    ax_p.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# --------------------------------------------------------------------------- re-identification


def retrieval_examples(dataset, results: Mapping, query: int = 0, k: int = 10) -> Figure:
    """One query and, for every network of ``results`` (and the ensemble), its top-``k``
    gallery images, framed **green** where the image shows the query's identity (a true match)
    and **red** where it does not.

    ``dataset``: a :class:`~kdlab.data.images.RetrievalDataset`; ``results``: name →
    :class:`~kdlab.tasks.retrieval.RetrievalResult` with ``top`` lists (from
    :func:`kdlab.tasks.retrieval.retrieve`); ``query``: the query's index. The lists are the
    ones the protocol ranks: junk and the query's identity in the query's own camera are
    already removed. Each row's label gives the network's AP on this query (– where the query
    has no true match and is skipped).
    """
    q_images, q_ids, q_cams = dataset.query
    g_images, g_ids, g_cams = dataset.gallery
    identity = int(q_ids[query])
    rows = list(results)
    k = min(k, next(iter(results.values())).top.shape[1])
    fig = Figure(figsize=(0.8 * (k + 1) + 1.6, 1.45 * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for row, name in enumerate(rows):
        result = results[name]
        ap = float(result.ap[query])
        first = axes[row, 0]
        first.imshow(_as_image(q_images[query]), cmap="gray", aspect="auto")
        first.set_ylabel(f"{name}\nAP {'–' if ap != ap else f'{ap:.2f}'}", fontsize=8)
        first.set_title(
            f"query id {identity} c{int(q_cams[query])}" if row == 0 else "", fontsize=7
        )
        for col, index in enumerate(result.top[query, :k].tolist(), 1):
            ax = axes[row, col]
            if index >= 0:
                right = int(g_ids[index]) == identity
                ax.imshow(_as_image(g_images[index]), cmap="gray", aspect="auto")
                ax.set_xlabel(f"{int(g_ids[index])} c{int(g_cams[index])}", fontsize=6, labelpad=1)
                for spine in ax.spines.values():
                    spine.set_color("tab:green" if right else "tab:red")
                    spine.set_linewidth(3)
            if row == 0:
                ax.set_title(str(col), fontsize=7)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"{dataset.name}: the top {k} of the gallery for one query "
        "(green: the same identity, red: another; labels: identity and camera)",
        fontsize=9,
    )
    return fig


def identity_grid(dataset, identities: int = 6, per_identity: int = 8) -> Figure:
    """Training images of the first ``identities`` identities of a re-ID data set, one row
    each, ordered by camera (the label under each image: ``c<camera>``)."""
    rows = list(range(min(identities, dataset.num_classes)))
    fig = Figure(figsize=(0.8 * per_identity + 1.4, 1.25 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), per_identity, squeeze=False)
    cams = dataset.train_cams
    for row, label in enumerate(rows):
        idx = (dataset.train_labels == label).nonzero().flatten()
        if cams is not None:
            idx = idx[torch.argsort(cams[idx], stable=True)]
        for col in range(per_identity):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(idx):
                ax.imshow(_as_image(dataset.train_images[idx[col]]), cmap="gray", aspect="auto")
                if cams is not None:
                    ax.set_xlabel(f"c{int(cams[idx[col]])}", fontsize=7, labelpad=1)
            if col == 0:
                ax.set_ylabel(dataset.classes[label][:10], fontsize=7)
    fig.suptitle(
        f"{dataset.name}: training images of {len(rows)} identities (c: camera)", fontsize=9
    )
    return fig
