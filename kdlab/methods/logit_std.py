"""KD with logit standardisation (Sun, Ren, Li, Wang, Cao, CVPR 2024), offline."""

from __future__ import annotations

import dataclasses

from ..losses import logit_std_kd_loss
from .base import FrozenTeacherMethod, check_temperature, check_weight, register


@register
class LogitStandardKD(FrozenTeacherMethod):
    """``L_s = w_ce·CE(y, z_s) + w_kd·T²·KL(sg p̃_t^T ‖ p̃_s^T)`` (METHODS.md §7).

    ``p̃^T = softmax(Z(z) / T)`` with ``Z(z) = (z − mean_c z) / (std_c z + 1e-7)`` the per-sample
    z-score over the classes (:func:`kdlab.losses.standardize_logits`), for teacher and student
    alike; T is the *base* temperature. The teacher is frozen in eval mode and detached.

    Weights are the authors' (sunshangquan/logit-standardization-KD: ``--logit-stand
    --base-temp 2 --kd-weight 9`` for the CIFAR-100 ResNet32×4 → ResNet8×4 run, i.e.
    ``KD.TEMPERATURE = 2, KD.LOSS.KD_WEIGHT = 9`` in ``mdistiller/engine/cfg.py`` and
    ``tools/train.py``, and ``KD.LOSS.CE_WEIGHT = 0.1``, inherited from mdistiller's KD, as the
    authors explain in their issue #8). Unlike :class:`~kdlab.methods.kd.KnowledgeDistillation`,
    whose α splits one unit between the two terms (0.1 / 0.9), these weights do not add up to 1:
    the distillation term weighs 10 times KD's. Logged terms are the weighted ones, ``ce`` and
    ``kd``.
    """

    name = "kd_ls"

    @dataclasses.dataclass
    class Params:
        kd_weight: float = 9.0  # weight of the KD term on standardised logits
        ce_weight: float = 0.1
        temperature: float = 2.0  # the base temperature, on logits of unit spread

    def validate(self):
        check_weight("kd_weight", self.params.kd_weight)
        check_weight("ce_weight", self.params.ce_weight)
        check_temperature("temperature", self.params.temperature)

    def student_terms(self, logits, teacher_logits, y, epoch):
        p = self.params
        return {
            "ce": p.ce_weight * self.ce(logits, y),
            "kd": p.kd_weight * logit_std_kd_loss(logits, teacher_logits, p.temperature),
        }
