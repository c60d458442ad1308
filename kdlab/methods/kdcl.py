"""KDCL: online knowledge distillation via collaborative learning (Guo, Wang, Wu, Yu, Liang,
Hu, Luo, CVPR 2020; METHODS.md §11)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..losses import kd_loss
from .base import (
    Edge,
    Method,
    as_views,
    check_choice,
    check_temperature,
    check_weight,
    rampup_weight,
    register,
)

__all__ = ["Collaborative", "TEACHERS", "build_teacher", "linear_weights"]

TEACHERS = ("naive", "linear", "min_logit")


def linear_weights(logits: torch.Tensor, y: torch.Tensor, steps: int = 25) -> torch.Tensor:
    """KDCL-Linear's weights: ``w`` on the simplex minimising ``CE(y, Σ_i w_i z_i)`` on the batch.

    ``logits`` N × B × C (the students', detached). ``w = softmax(a)`` from the uniform weights,
    ``steps`` Adam steps on ``a`` (lr 0.1), and the best ``w`` seen is kept, so the result is
    never worse on the batch than the naive mean. Weights on the simplex: unconstrained ones
    would scale the logits up to drive the CE to 0 rather than combine the students.
    """
    z = logits.detach().float()
    a = torch.zeros(z.shape[0], device=z.device, requires_grad=True)
    optimizer = torch.optim.Adam([a], lr=0.1)
    best = torch.full_like(a, 1.0 / z.shape[0]).detach()
    best_loss = torch.full((), float("inf"), device=z.device)
    # float32 whatever the step's autocast; the best weights are kept on the device (no sync).
    with torch.enable_grad(), torch.autocast(z.device.type, enabled=False):
        for _ in range(steps + 1):
            w = F.softmax(a, dim=0)
            loss = F.cross_entropy(torch.einsum("n,nbc->bc", w, z), y)
            better = loss.detach() < best_loss
            best = torch.where(better, w.detach(), best)
            best_loss = torch.where(better, loss.detach(), best_loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return best


def build_teacher(logits: torch.Tensor, y: torch.Tensor, kind: str = "naive", steps: int = 25):
    """The teacher's logits (B × C, detached) built from the students' (N × B × C):

    - ``naive``: the mean of the students' logits;
    - ``linear``: ``Σ_i w_i z_i`` with :func:`linear_weights` (fitted to the batch's labels);
    - ``min_logit``: every student's logits minus its logit of the true class, then the
      minimum over the students for every class: ``z_t[c] = min_i (z_i[c] − z_i[y])`` (0 for
      the true class, the largest margin any student gives it for the others).
    """
    z = logits.detach().float()
    if kind == "naive":
        return z.mean(0)
    if kind == "linear":
        return torch.einsum("n,nbc->bc", linear_weights(z, y, steps), z)
    if kind == "min_logit":
        true = z.gather(2, y.view(1, -1, 1).expand(z.shape[0], -1, 1))
        return (z - true).min(0).values
    raise ValueError(f"unknown teacher {kind!r}; choose one of: {', '.join(TEACHERS)}")


@register
class Collaborative(Method):
    """N ≥ 2 students trained together from a teacher built from their own logits:

    ``L_i = CE(y, z_i) + λ · w(e) · T² · KL(sg p_t^T ‖ p_i^T)``, ``z_t`` = :func:`build_teacher`
    of the students. logits (``ensemble``: ``naive``, ``linear`` or ``min_logit``), detached.

    With ``augment_per_student`` (the default) every student sees its own random crop and flip
    of each image (the method asks the loader for N views, :attr:`Method.views`), and the
    teacher combines the students' outputs on their different views: the paper's point is that
    this ensemble generalises better than any student. Batchmean KL with T²; ``w(e)`` the
    sigmoid ramp-up over ``rampup`` epochs.

    No code by the authors was found; a reimplementation (github.com/shaoeric/Online-Knowledge-
    Distillation-via-Collaborative-Learning, ``train.py``, ``data.py``) gives each student its
    own transform, as here, but builds the teacher as the *sum* of the logits with T = 4 and
    ``(1 − α)·CE + α·KL``, α = 0.5 — not the paper's. kdlab's defaults follow METHODS.md §11:
    T = 3, λ = 1, the naive teacher, and the family's 80-epoch ramp-up (``rampup=0``: none).
    The linear teacher's weights are fitted on each batch (:func:`linear_weights`); the paper's
    solver for them is not public. The minimum-logit teacher and the linear one read the
    labels, so they are training-time teachers only: the reported ``ensemble`` is the
    students' mean softmax.

    Logged terms per student: ``ce`` and ``kd`` (weighted). Evaluated: every student.
    """

    name = "kdcl"
    role = "student"
    min_networks = 2

    @dataclasses.dataclass
    class Params:
        lam: float = 1.0  # λ, the weight of the teacher's term
        temperature: float = 3.0  # T of the KL to the built teacher
        rampup: float = 80.0  # epochs of the sigmoid ramp-up of w(e); 0: w = 1 throughout
        ensemble: str = "naive"  # the teacher: naive (mean of the logits) | linear | min_logit
        augment_per_student: bool = True  # every student sees its own augmentation
        linear_steps: int = 25  # Adam steps fitting the linear teacher's weights per batch

    def __init__(self, networks, **params) -> None:
        super().__init__(networks, **params)
        self.views = len(self.networks) if self.params.augment_per_student else 1

    def validate(self) -> None:
        p = self.params
        check_weight("lam", p.lam)
        check_temperature("temperature", p.temperature)
        check_weight("rampup", p.rampup)
        check_choice("ensemble", p.ensemble, TEACHERS)
        if p.linear_steps < 0:
            raise ValueError(f"linear_steps must be ≥ 0, got {p.linear_steps}")

    def teaching_edges(self) -> list[Edge]:
        names = list(self.networks)
        return [Edge(n, "teacher", "builds") for n in names] + [
            Edge("teacher", n, "teaches") for n in names
        ]

    def training_step(self, x, y, update, *, epoch=1, step=0):
        p = self.params
        inputs = as_views(x, len(self.networks))
        logits = {name: net(v) for (name, net), v in zip(self.networks.items(), inputs)}
        teacher = build_teacher(torch.stack(list(logits.values())), y, p.ensemble, p.linear_steps)
        w = rampup_weight(epoch, p.rampup)
        update(
            {
                name: {"ce": self.ce(z, y), "kd": p.lam * w * kd_loss(z, teacher, p.temperature)}
                for name, z in logits.items()
            }
        )
        return {}
