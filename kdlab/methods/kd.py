"""Offline knowledge distillation from a frozen, pretrained teacher (Hinton et al. 2015)."""

from __future__ import annotations

import dataclasses

import torch

from ..losses import cross_entropy, kd_loss
from .base import Method, check_temperature, register


@register
class KnowledgeDistillation(Method):
    """``L_s = (1 − α) · CE(y, z_s) + α · T² · KL(sg p_t^T ‖ p_s^T)`` (METHODS.md §2).

    α weights the *distillation* term (the CRD/RepDistiller and mdistiller convention: CE weight
    0.1, KD weight 0.9, T = 4); torchdistill's ``alpha`` weights the cross-entropy instead.
    The teacher is frozen in eval mode and detached: it receives no gradient. Logged terms are
    the weighted ones, ``ce`` = (1 − α)·CE and ``kd`` = α·T²·KL, so they add up to the loss.
    """

    name = "kd"
    role = "student"
    teacher_mode = "pretrained"

    @dataclasses.dataclass
    class Params:
        alpha: float = 0.9  # weight of the distillation term; (1 − α) weights the CE
        temperature: float = 4.0

    def __init__(self, networks, teacher: torch.nn.Module, **params):
        super().__init__(networks, **params)
        teacher.requires_grad_(False)
        self.frozen["teacher"] = teacher

    def validate(self):
        if not 0 <= self.params.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.params.alpha}")
        check_temperature("temperature", self.params.temperature)

    def training_step(self, x, y, update, *, epoch=1, step=0):
        alpha, temperature = self.params.alpha, self.params.temperature
        with torch.no_grad():
            teacher_logits = self.frozen["teacher"](x)
        terms = {}
        for name, student in self.networks.items():
            logits = student(x)
            terms[name] = {
                "ce": (1 - alpha) * cross_entropy(logits, y),
                "kd": alpha * kd_loss(logits, teacher_logits, temperature),
            }
        update(terms)
        return {}
