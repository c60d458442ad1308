"""Loss functions of the kit: pure functions of tensors that depend on torch alone.

Conventions (METHODS.md, "Notation"):

- ``p^T = softmax(z / T)``; ``sg(x)`` is ``x.detach()``: a network never receives gradient
  through another network's output, so every "teacher" or "peer" argument below is detached here.
- ``KL(p‖q) = Σ_c p_c log(p_c / q_c)``, summed over classes and averaged over the batch
  (``reduction="batchmean"``). ``F.kl_div(log q, p)`` computes ``KL(p‖q)``: the *target*
  distribution comes second.
- Loss weights (α, λ, β, ...) are not applied here; the methods apply them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "cross_entropy",
    "kl_divergence",
    "kd_loss",
    "mutual_kl",
    "js_divergence",
    "probability_distance",
    "topology_loss",
    "pooled_embedding",
    "dkd_terms",
    "pearson_correlation",
    "dist_terms",
    "standardize_logits",
    "logit_std_kd_loss",
    "hint_loss",
    "flow_matrix",
    "fsp_loss",
    "logit_regression_loss",
]


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """``CE(y, z) = −mean_i Σ_c q_ic log softmax(z_i)_c``, the loss of independent training.

    ``q_i`` is the one-hot label, or with label smoothing ε the mixture
    ``(1 − ε)·onehot(y_i) + ε/C`` (Szegedy et al. 2016; PyTorch's convention: the ε/C share
    goes to every class, the true one included). ``logits`` B×C (any float dtype, computed in
    float32), ``labels`` B class indices; returns a scalar.
    """
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def kl_divergence(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0):
    """``KL(sg p_target^T ‖ p^T)``, batchmean: the pull of ``logits`` towards ``target_logits``.

    Gradient flows into ``logits`` only; ``target_logits`` is detached.
    """
    _check_temperature(temperature)
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    target = F.softmax(target_logits.detach().float() / temperature, dim=1)
    return F.kl_div(log_p, target, reduction="batchmean")


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Hinton's soft-target term ``T² · KL(sg p_t^T ‖ p_s^T)``, batchmean.

    The T² keeps the gradient on the scale of the cross-entropy as T changes (Hinton et al.
    2015, §2). The teacher is detached. The weight α is applied by the method
    (``(1 − α)·CE + α·kd_loss``, METHODS.md §2).
    """
    return temperature**2 * kl_divergence(teacher_logits, student_logits, temperature)


def mutual_kl(
    logits: torch.Tensor, peer_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """DML's mimicry term ``KL(sg p_peer^T ‖ p^T)``, batchmean (no T² factor; DML uses T = 1).

    The peer is detached: this term trains the network that produced ``logits`` only.
    """
    return kl_divergence(peer_logits, logits, temperature)


def js_divergence(logits: torch.Tensor, peer_logits: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence ``JS(p, sg p_peer) = ½ KL(p‖m) + ½ KL(p_peer‖m)``.

    ``m = ½(p + p_peer)``, ``p = softmax(logits)``.

    Batchmean, natural log: symmetric in value, 0 iff the distributions are equal, at most ln 2.
    The peer is detached (gradient reaches ``logits`` only, through both halves and through m).
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    log_q = F.log_softmax(peer_logits.detach().float(), dim=1)
    # log m = log(½(p + q)) computed stably in log space.
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(dim=1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(dim=1)
    return (0.5 * (kl_pm + kl_qm)).mean()


def probability_distance(logits: torch.Tensor, peer_logits: torch.Tensor, kind: str):
    """A divergence between ``p = softmax(logits)`` and ``sg p_peer``, batchmean.

    ``kind``: ``"kl"`` = KL(sg p_peer ‖ p) (DML's term), ``"js"`` = JS(p, sg p_peer),
    ``"l1"`` = Σ_c |p_c − q_c|, ``"l2"`` = Σ_c (p_c − q_c)² (the alternatives of TADML Table 1).
    """
    if kind == "kl":
        return mutual_kl(logits, peer_logits)
    if kind == "js":
        return js_divergence(logits, peer_logits)
    p = F.softmax(logits.float(), dim=1)
    q = F.softmax(peer_logits.detach().float(), dim=1)
    if kind == "l1":
        return (p - q).abs().sum(dim=1).mean()
    if kind == "l2":
        return (p - q).pow(2).sum(dim=1).mean()
    raise ValueError(f"unknown divergence {kind!r}; choose one of: js, kl, l1, l2")


def pooled_embedding(feature_map: torch.Tensor) -> torch.Tensor:
    """``h = normalize(mean_{x,y} f)``: the L2-normalised, globally pooled features of a stage.

    ``feature_map`` is B×C×H×W (a stage's output) or already B×D; the result is B×D, float32,
    every row of unit length.
    """
    h = feature_map.float()
    if h.dim() > 2:
        h = h.flatten(2).mean(dim=2)
    return F.normalize(h, dim=1)


def _neighbour_logits(h: torch.Tensor, index: torch.Tensor, tau: float) -> torch.Tensor:
    """``cos(h_i, h_j) / τ`` for every anchor i and its neighbours j = index[i] (B×K)."""
    h = F.normalize(h.float().flatten(1), dim=1)
    return torch.gather(h @ h.T, 1, index) / tau


def topology_loss(
    embedding: torch.Tensor,
    peer_embedding: torch.Tensor,
    k: int = 16,
    tau: float = 0.1,
    sampling: str = "knn",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Local-topology agreement ``mean_i KL(sg q_peer(·|i) ‖ q(·|i))`` (METHODS.md §5).

    The formula is a reconstruction (the TADML paper's full text was not available).

    For every anchor i of the batch a set N_K(i) of K *other* samples is chosen — ``"knn"``:
    its K nearest neighbours (cosine) in the detached peer's embedding; ``"random"``: K random
    others — and on that set ``q(j | i) = softmax_j(cos(h_i, h_j) / τ)``. Embeddings (B×D, or
    B×C×H×W flattened) are L2-normalised here; the two may have different widths D, since only
    the B×B similarities are compared. The peer is detached; the KL is summed over the K
    neighbours and averaged over the anchors. Computed in float32 even under autocast: with
    τ = 0.1 the similarities are scaled ×10, and bf16 rounding would show in the softmax.

    Raises ValueError when K < 1 or K ≥ batch size (an anchor has only B − 1 others), τ ≤ 0, or the
    strategy is unknown.
    """
    batch = embedding.shape[0]
    if peer_embedding.shape[0] != batch:
        raise ValueError("embedding and peer_embedding must have the same batch size")
    if not 1 <= k < batch:
        raise ValueError(
            f"topology K={k} needs 1 ≤ K < batch size ({batch}): every anchor has only "
            f"{batch - 1} other samples"
        )
    if not tau > 0:
        raise ValueError(f"topology tau must be > 0, got {tau}")
    if sampling not in ("knn", "random"):
        raise ValueError(f"unknown sampling strategy {sampling!r}; choose one of: knn, random")
    device = embedding.device
    with torch.autocast(device.type, enabled=False):
        peer = F.normalize(peer_embedding.detach().float().flatten(1), dim=1)
        eye = torch.eye(batch, dtype=torch.bool, device=device)
        if sampling == "knn":
            similarity = (peer @ peer.T).masked_fill(eye, -float("inf"))
            index = similarity.topk(k, dim=1).indices
        else:
            # K distinct others per anchor: rank random scores with the anchor itself pushed last.
            scores = torch.rand(batch, batch, device=device, generator=generator)
            index = scores.masked_fill(eye, 2.0).topk(k, dim=1, largest=False).indices
        log_q = F.log_softmax(_neighbour_logits(embedding, index, tau), dim=1)
        target = F.softmax(_neighbour_logits(peer, index, tau), dim=1)
        return F.kl_div(log_q, target, reduction="batchmean")


# --------------------------------------------------------------------------- beyond Hinton
# Modern logit distillation (METHODS.md §7). Each term is T²-scaled like kd_loss; the methods
# apply the weights.


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "batchmean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r}; choose batchmean or none")


def dkd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """DKD's two terms (Zhao et al. 2022): ``(T²·KL(sg b_t ‖ b_s), T²·KL(sg p̂_t ‖ p̂_s))``.

    At temperature T, ``b = [p_gt, 1 − p_gt]`` is the binary split of ``p^T`` into the true
    class and all the others (TCKD, target-class KD) and ``p̂`` is the softmax of ``z / T`` over
    the non-target classes only (NCKD, non-target-class KD), ``p̂_c = p_c / (1 − p_gt)``.
    The teacher is detached; KL runs from the teacher to the student, summed over the two
    (resp. C − 1) entries and averaged over the batch (``reduction="none"``: one value per
    sample). The weights α, β and the warm-up are the method's (:mod:`kdlab.methods.dkd`).

    Hinton's term decomposes exactly, per sample:
    ``T²·KL(p_t^T ‖ p_s^T) = TCKD + (1 − p_t,gt^T) · NCKD`` — KD is DKD with α = 1 and β set to
    the teacher's non-target mass, so KD weakens NCKD exactly where the teacher is confident.
    """
    _check_temperature(temperature)
    z_s = student_logits.float() / temperature
    z_t = teacher_logits.detach().float() / temperature
    gt = F.one_hot(labels, z_s.shape[1]).bool()

    def split(z):
        # log b = [log p_gt, log(1 − p_gt)] and log p̂ (−inf at the true class), all stable.
        log_p = F.log_softmax(z, dim=1)
        others = z.masked_fill(gt, -float("inf"))
        log_rest = torch.logsumexp(others, dim=1) - torch.logsumexp(z, dim=1)
        log_b = torch.stack([log_p[gt], log_rest], dim=1)
        return log_b, F.log_softmax(others, dim=1)

    log_b_s, log_hat_s = split(z_s)
    log_b_t, log_hat_t = split(z_t)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(dim=1)
    nckd_entries = log_hat_t.exp() * (log_hat_t - log_hat_s)
    nckd = torch.where(gt, torch.zeros_like(nckd_entries), nckd_entries).sum(dim=1)
    scale = temperature**2
    return _reduce(scale * tckd, reduction), _reduce(scale * nckd, reduction)


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation ``ρ(a_i, b_i)`` of two B×N matrices (B values).

    ``ρ = Σ_n (a_n − ā)(b_n − b̄) / (‖a − ā‖·‖b − b̄‖ + eps)``: the cosine of the centred rows,
    with the authors' ``eps = 1e-8`` in the denominator (a constant row gives ρ = 0).
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """DIST's two terms (Huang et al. 2022): ``(T²·inter, T²·intra)``.

    With ``P_s = softmax(z_s / T)`` and ``P_t = sg softmax(z_t / T)`` (B × C):
    inter-class ``= 1 − mean_i ρ(P_s[i, :], P_t[i, :])`` (each sample's ranking of the classes),
    intra-class ``= 1 − mean_c ρ(P_s[:, c], P_t[:, c])`` (each class's ranking of the samples of
    the batch; needs B ≥ 2). ρ is :func:`pearson_correlation` on probabilities, not logits.
    No KL: a student matches the teacher's *relations*, not its values, so a student whose
    probabilities are a positive affine map of the teacher's (per row) scores inter = 0. Each term is
    multiplied by T² (METHODS.md §7); the weights β, γ are the method's.
    """
    _check_temperature(temperature)
    p_s = F.softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    inter = 1 - pearson_correlation(p_s, p_t).mean()
    intra = 1 - pearson_correlation(p_s.T, p_t.T).mean()
    return temperature**2 * inter, temperature**2 * intra


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The per-sample z-score of logits, ``(z − mean_c z) / (std_c z + eps)`` (B × C).

    ``std`` is the sample standard deviation over the C classes (Bessel's correction, divisor
    C − 1, as ``torch.std``'s default in the authors' code), and ``eps = 1e-7`` is theirs.
    Every row of the result has mean 0 and standard deviation 1 (up to eps): what is left is
    the *shape* of the logits, not their offset or their scale.
    """
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def logit_std_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """KD on standardised logits (Sun et al. 2024): ``T²·KL(sg p̃_t^T ‖ p̃_s^T)``, batchmean.

    ``p̃^T = softmax(standardize_logits(z) / T)`` for teacher and student alike: the student no
    longer has to match the teacher's logit *range*, only their shape, and T (the base
    temperature) acts on logits of unit spread. The teacher is detached. The weights are the
    method's (:mod:`kdlab.methods.logit_std`).
    """
    return kd_loss(
        standardize_logits(student_logits), standardize_logits(teacher_logits), temperature
    )


# -- Table 7's feature and logit regression baselines (METHODS.md §8) ---------------------------


def _pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` (B×C×H×W) with the larger one average-pooled to the other's H×W."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    size = tuple(min(i, j) for i, j in zip(a.shape[-2:], b.shape[-2:], strict=True))
    return F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)


def hint_loss(regressed: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """FitNet's hint (Romero et al. 2015): ``mean over (B, C, H, W) of (r(f_s) − sg f_t)²``.

    ``regressed`` is the student's feature map already through its regressor ``r`` (so its
    channels are the teacher's); ``teacher_map`` is detached. The mean over every element is
    RepDistiller's (``nn.MSELoss()``, whose weight β = 100 the method takes); the paper's
    ``½‖r(f_s) − f_t‖²`` summed over a sample's C·H·W elements differs by the constant factor
    C·H·W / 2, which the weight absorbs. Where the spatial sizes differ, the larger map is
    average-pooled to the smaller's size (equal at the same stage of the kit's CIFAR networks).
    Computed in float32. Returns a scalar.
    """
    regressed, target = _pool_to_smaller(regressed.float(), teacher_map.detach().float())
    return (regressed - target).square().mean()


def flow_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The FSP ("flow of solution procedure") matrix of Yim et al. (CVPR 2017), per sample.

    For maps ``F1`` (B×m×h×w) and ``F2`` (B×n×h×w), ``G = (1/(h·w)) Σ_s F1[s] F2[s]ᵀ``: B×m×n,
    the channels' inner products averaged over the h·w positions s. Maps of different spatial
    sizes (two stages of a network) are paired by average-pooling the larger to the smaller's
    size first (RepDistiller's rule). Float32.
    """
    first, second = _pool_to_smaller(first.float(), second.float())
    positions = first.shape[-2] * first.shape[-1]
    return torch.bmm(first.flatten(2), second.flatten(2).transpose(1, 2)) / positions


def fsp_loss(student_maps, teacher_maps) -> torch.Tensor:
    """FSP's loss: the mean over consecutive stage pairs (k, k + 1) of
    ``mean over (B, m, n) of (G_s − sg G_t)²``, with ``G`` :func:`flow_matrix` of the two
    stages' maps (lists, input side first; the teacher's detached).

    The mean over the m·n entries is RepDistiller's (``(s − t).pow(2).mean()``); Yim et al.
    write the squared Frobenius norm ``‖G_t − G_s‖²``, the sum over the entries, which is m·n
    times this for every pair. The pairs are averaged (RepDistiller sums them). Student and
    teacher must have the same channel counts at every stage (G_s and G_t are both m×n).
    """
    if len(student_maps) != len(teacher_maps) or len(student_maps) < 2:
        raise ValueError(
            f"fsp needs two or more stages, as many in the student ({len(student_maps)}) as "
            f"in the teacher ({len(teacher_maps)})"
        )
    terms = []
    for k in range(len(student_maps) - 1):
        g_s = flow_matrix(student_maps[k], student_maps[k + 1])
        g_t = flow_matrix(teacher_maps[k].detach(), teacher_maps[k + 1].detach())
        if g_s.shape != g_t.shape:
            raise ValueError(
                f"fsp: the flow matrices of stages {k + 1}-{k + 2} are {tuple(g_s.shape[1:])} "
                f"(student) and {tuple(g_t.shape[1:])} (teacher): FSP needs equal channel counts"
            )
        terms.append((g_s - g_t).square().mean())
    return torch.stack(terms).mean()


def logit_regression_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor):
    """SNN-MIMIC's logit regression (Ba & Caruana 2014): ``½ mean_i ‖z_s,i − sg z_t,i‖²``.

    L2 between the *logits* (not the probabilities), summed over the C classes, halved, and
    averaged over the batch; the teacher's logits are detached. Float32; returns a scalar.
    """
    difference = student_logits.float() - teacher_logits.detach().float()
    return 0.5 * difference.square().sum(dim=1).mean()
