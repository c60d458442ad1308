"""Logit regression, SNN-MIMIC (Ba & Caruana, "Do deep nets really need to be deep?", NeurIPS
2014), offline, from a frozen pretrained teacher (METHODS.md §8)."""

from __future__ import annotations

import dataclasses

from ..losses import logit_regression_loss
from .base import FrozenTeacherMethod, check_weight, register

__all__ = ["LogitRegression"]


@register
class LogitRegression(FrozenTeacherMethod):
    """``L_s = w·½ mean_i ‖z_s,i − sg z_t,i‖² + w_ce·CE(y, z_s)`` (METHODS.md §8).

    L2 regression of the student's *logits* onto the teacher's, summed over the classes, halved
    and averaged over the batch (:func:`kdlab.losses.logit_regression_loss`): no softmax and no
    temperature, so the student must match the teacher's logit values, offset and scale
    included, where KD matches only the softmax of them. Ba & Caruana's mimic networks learn from
    the teacher's logits alone, hence ``ce_weight = 0`` and ``weight = 1`` by default (the CE,
    weighted 0, is still logged, as ``ce``); a positive ``ce_weight`` adds the labels. The
    teacher is frozen in eval mode and detached. Logged terms are the weighted ones: ``l2`` and
    ``ce``.
    """

    name = "logit_regression"

    @dataclasses.dataclass
    class Params:
        weight: float = 1.0  # weight of ½ mean ‖z_s − z_t‖²
        ce_weight: float = 0.0  # weight of the CE with the labels (SNN-MIMIC: none)

    def validate(self):
        for name in ("weight", "ce_weight"):
            check_weight(name, getattr(self.params, name))

    def student_terms(self, logits, teacher_logits, y, epoch):
        p = self.params
        return {
            "l2": p.weight * logit_regression_loss(logits, teacher_logits),
            "ce": p.ce_weight * self.ce(logits, y),
        }
