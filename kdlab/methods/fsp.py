"""FSP: the flow of solution procedure (Yim, Joo, Bae, Kim, "A gift from knowledge
distillation", CVPR 2017), offline, from a frozen pretrained teacher (METHODS.md §8)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..losses import fsp_loss
from .base import FrozenTeacherMethod, check_weight, register

__all__ = ["FSP"]


@register
class FSP(FrozenTeacherMethod):
    """The student matches the teacher's flow matrices between consecutive stages.

    For stage maps ``F1`` (m channels) and ``F2`` (n channels), ``G = (1/(h·w)) Σ_s F1[s]
    F2[s]ᵀ`` (m×n per sample; :func:`kdlab.losses.flow_matrix`), and
    ``fsp = mean over the pairs (k, k + 1) of mean over (B, m, n) of (G_s − sg G_t)²``
    (:func:`kdlab.losses.fsp_loss`). The pairs are the consecutive entries of
    ``model(x, return_features=True)``'s list, the outputs of the stages (two pairs for the
    three-stage CIFAR ResNets; RepDistiller's list starts with the stem, which adds a stem →
    stage-1 pair that the kit's networks do not return). Consecutive stages differ in size, so
    the larger map is average-pooled to the smaller's size (RepDistiller's rule); Yim et al.
    pair the first and last maps of one section, of equal sizes. Student and teacher must have
    the same channel counts at every stage (a ValueError otherwise: e.g. resnet20's student
    with a resnet110 teacher, not a resnet164 one). The teacher is frozen in eval mode and
    forwarded under ``torch.no_grad()``.

    Schedules (``stages``):

    - ``2`` (default): the paper's, and RepDistiller's (``helper/pretrain.py``): epochs
      1…``fsp_epochs`` train ``β·fsp`` alone (every stage of the student, not its classifier),
      then ``w_ce·CE(y, z_s)`` alone, the main task. The default because both sources use FSP as
      an initialisation, and no one-stage weight is published: RepDistiller's script passes
      ``-b 50``, but its main stage multiplies a zero FSP term. RepDistiller gives the first
      stage 30 epochs (``--init_epochs``) before its 240; here the stages share the run's epochs
      and schedule.
    - ``1``: ``w_ce·CE + β·fsp`` in every epoch.

    β = 1 on the mean over pairs: at lr 0.1 about RepDistiller's first stage (its FSP terms
    summed over three pairs, at lr 0.05). Logged terms are the weighted ones: ``fsp`` (first
    stage), ``ce`` (second), both with ``stages=1``.
    """

    name = "fsp"

    @dataclasses.dataclass
    class Params:
        beta: float = 1.0  # weight of the FSP term
        stages: int = 2  # 2: FSP alone first, then CE alone; 1: CE + β·FSP throughout
        fsp_epochs: int = 30  # stages=2: the epochs of the FSP stage (RepDistiller's 30)
        ce_weight: float = 1.0

    def __init__(self, networks, teacher: nn.Module, **params) -> None:
        super().__init__(networks, teacher, **params)
        wanted = getattr(teacher, "stage_channels", None)
        for name, net in networks.items():
            got = getattr(net, "stage_channels", None)
            if wanted is None or got != wanted or len(got) < 2:
                raise ValueError(
                    f"fsp matches m×n flow matrices, so {name}'s stage channels ({got}) must be "
                    f"the teacher's ({wanted}), two stages or more: pick a teacher of the "
                    "student's widths (e.g. resnet110 for resnet20)"
                )

    def validate(self):
        for name in ("beta", "ce_weight"):
            check_weight(name, getattr(self.params, name))
        if self.params.stages not in (1, 2):
            raise ValueError(
                f"stages must be 1 (CE + FSP) or 2 (FSP, then CE), got {self.params.stages}"
            )
        if self.params.fsp_epochs < 1:
            raise ValueError(f"fsp_epochs must be ≥ 1, got {self.params.fsp_epochs}")

    def in_fsp_stage(self, epoch: int) -> bool:
        """Whether ``epoch`` (from 1) trains FSP alone: the first stage of two."""
        return self.params.stages == 2 and epoch <= self.params.fsp_epochs

    def fsp_terms(self, logits, maps, teacher_maps, y, epoch):
        """One student's named terms from its logits, its stage maps, the teacher's (detached)
        maps, the labels and the epoch (from 1)."""
        p = self.params
        if self.in_fsp_stage(epoch):
            return {"fsp": p.beta * fsp_loss(maps, teacher_maps)}
        terms = {"ce": p.ce_weight * self.ce(logits, y)}
        if p.stages == 1:
            terms["fsp"] = p.beta * fsp_loss(maps, teacher_maps)
        return terms

    def training_step(self, x, y, update, *, epoch=1, step=0):
        with torch.no_grad():
            _, teacher_maps = self.frozen["teacher"](x, return_features=True)
        terms = {}
        for name, student in self.networks.items():
            logits, maps = student(x, return_features=True)
            terms[name] = self.fsp_terms(logits, maps, teacher_maps, y, epoch)
        update(terms)
        return {}
