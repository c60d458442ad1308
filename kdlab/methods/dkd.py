"""Decoupled knowledge distillation, DKD (Zhao, Cui, Song, Qiu, Liang, CVPR 2022), offline."""

from __future__ import annotations

import dataclasses

from ..losses import dkd_terms
from .base import FrozenTeacherMethod, check_temperature, check_weight, register


@register
class DecoupledKD(FrozenTeacherMethod):
    """``L_s = w_ce·CE(y, z_s) + warm(e)·(α·TCKD + β·NCKD)`` (METHODS.md §7).

    ``TCKD = T²·KL(sg b_t ‖ b_s)`` on the binary split ``b = [p_gt, 1 − p_gt]`` of ``p^T``, and
    ``NCKD = T²·KL(sg p̂_t ‖ p̂_s)`` on the softmax over the non-target classes only
    (:func:`kdlab.losses.dkd_terms`). ``warm(e) = min(e / warmup, 1)`` for epoch e counted from 1
    (as mdistiller's trainer counts them): the distillation term ramps up linearly over the first
    ``warmup`` epochs.

    Defaults are mdistiller's (``mdistiller/distillers/DKD.py`` and ``mdistiller/engine/cfg.py``:
    ``CE_WEIGHT = 1.0, ALPHA = 1.0, BETA = 8.0, T = 4.0, WARMUP = 20``; the CIFAR-100
    ResNet32×4 → ResNet8×4 config keeps them, for 240 epochs). Setting β to the teacher's
    non-target mass ``1 − p_t,gt^T`` per sample (and α = 1) gives back Hinton's
    ``T²·KL(p_t^T ‖ p_s^T)`` exactly. The teacher is frozen in eval mode and detached. Logged
    terms are the weighted ones: ``ce``, ``tckd`` and ``nckd``, warm-up included.
    """

    name = "dkd"

    @dataclasses.dataclass
    class Params:
        alpha: float = 1.0  # weight of TCKD (target vs non-target mass)
        beta: float = 8.0  # weight of NCKD (the distribution over the non-target classes)
        temperature: float = 4.0
        warmup: int = 20  # epochs over which the distillation weight ramps from 1/warmup to 1
        ce_weight: float = 1.0

    def validate(self):
        for name in ("alpha", "beta", "ce_weight"):
            check_weight(name, getattr(self.params, name))
        check_temperature("temperature", self.params.temperature)
        if self.params.warmup < 1:
            raise ValueError(f"warmup must be ≥ 1 epoch, got {self.params.warmup}")

    def warm(self, epoch: int) -> float:
        """``min(epoch / warmup, 1)``: the distillation weight in ``epoch`` (from 1)."""
        return min(epoch / self.params.warmup, 1.0)

    def student_terms(self, logits, teacher_logits, y, epoch):
        p, warm = self.params, self.warm(epoch)
        tckd, nckd = dkd_terms(logits, teacher_logits, y, p.temperature)
        return {
            "ce": p.ce_weight * self.ce(logits, y),
            "tckd": warm * p.alpha * tckd,
            "nckd": warm * p.beta * nckd,
        }
