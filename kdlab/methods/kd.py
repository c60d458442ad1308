"""Offline knowledge distillation from a frozen, pretrained teacher (Hinton et al. 2015)."""

from __future__ import annotations

import dataclasses

from ..losses import kd_loss
from .base import FrozenTeacherMethod, check_temperature, register


@register
class KnowledgeDistillation(FrozenTeacherMethod):
    """``L_s = (1 − α) · CE(y, z_s) + α · T² · KL(sg p_t^T ‖ p_s^T)`` (METHODS.md §2).

    α weights the *distillation* term (the CRD/RepDistiller and mdistiller convention: CE weight
    0.1, KD weight 0.9, T = 4); torchdistill's ``alpha`` weights the cross-entropy instead.
    The teacher is frozen in eval mode and detached: it receives no gradient. Logged terms are
    the weighted ones, ``ce`` = (1 − α)·CE and ``kd`` = α·T²·KL, so they add up to the loss.
    """

    name = "kd"

    @dataclasses.dataclass
    class Params:
        alpha: float = 0.9  # weight of the distillation term; (1 − α) weights the CE
        temperature: float = 4.0

    def validate(self):
        if not 0 <= self.params.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.params.alpha}")
        check_temperature("temperature", self.params.temperature)

    def student_terms(self, logits, teacher_logits, y, epoch):
        alpha, temperature = self.params.alpha, self.params.temperature
        return {
            "ce": (1 - alpha) * self.ce(logits, y),
            "kd": alpha * kd_loss(logits, teacher_logits, temperature),
        }
