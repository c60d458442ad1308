"""FitNets: hints for thin deep nets (Romero, Ballas, Kahou, Chassang, Gatta, Bengio, ICLR 2015),
offline, from a frozen pretrained teacher (METHODS.md §8)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..losses import hint_loss, kd_loss
from .base import FrozenTeacherMethod, check_temperature, check_weight, register

__all__ = ["FitNet", "regressor"]


def regressor(in_channels: int, out_channels: int, relu: bool = False) -> nn.Sequential:
    """FitNet's regressor ``r``: a 1×1 convolution from the student's channels to the teacher's,
    then BatchNorm (and a ReLU with ``relu``, as RepDistiller's ``ConvReg`` by default)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@register
class FitNet(FrozenTeacherMethod):
    """A hint: the student's feature map at ``hint_stage``, through a learned regressor ``r``,
    regresses the teacher's map at the same stage (METHODS.md §8).

    ``hint = mean over (B, C, H, W) of (r(f_s) − sg f_t)²`` (:func:`kdlab.losses.hint_loss`);
    ``r`` is a 1×1 convolution + BatchNorm (:func:`regressor`) per student, from the student's
    channels at that stage to the teacher's. The teacher is frozen in eval mode and forwarded
    under ``torch.no_grad()``: no gradient reaches it. ``hint_stage`` counts the network's
    stages from 1 (``model(x, return_features=True)``'s list); the default 2 is the middle stage
    of the CIFAR ResNets, RepDistiller's ``--hint_layer 2`` (its list starts with the stem).

    Schedules (``stages``):

    - ``1`` (default): ``L_s = w_ce·CE(y, z_s) + β·hint`` in every epoch, RepDistiller's CIFAR
      benchmark (``--distill hint -a 0 -b 100``: CE weight 1, β = 100, no KD term). The default
      because it is the setting the published CIFAR tables of FitNet use, and because one loss
      for the whole run fits one schedule of learning rates without a stage boundary to choose.
    - ``2``: the paper's two stages. Epochs 1…``hint_epochs``: ``β·hint`` alone, which trains
      the student up to the hinted stage and the regressor (nothing else gets a gradient); then
      KD on the whole student, ``(1 − α)·CE + α·T²·KL(sg p_t^T ‖ p_s^T)`` (the kit's KD, α = 0.9,
      T = 4), with no hint. RepDistiller gives its initialisation stages 30 epochs
      (``--init_epochs``), before its 240; here the stages share the run's epochs and schedule.

    The regressors live in ``auxiliary["regressors"]``, trained by the students' hint terms and
    stepped in the same update (``also_step``): SGD with Nesterov momentum 0.9 and weight decay
    5e-4 at ``regressor_lr`` (RepDistiller trains its regressor with the student's SGD, at
    0.05), following the run's schedule. ``regressor_relu`` adds RepDistiller's ReLU after the
    BatchNorm: right for a teacher whose hinted map is post-ReLU (the post-activation CIFAR
    ResNets), wrong for a pre-activation teacher (wrn, resnet164), whose inner maps are sums
    that go negative: off by default. Logged terms are the weighted ones: ``ce``, ``hint``
    (stage 1 of two: ``hint`` only; stage 2: ``ce`` and ``kd``).
    """

    name = "fitnet"

    @dataclasses.dataclass
    class Params:
        beta: float = 100.0  # weight of the hint (RepDistiller's -b 100)
        hint_stage: int = 2  # the hinted stage of student and teacher, from 1 (the middle one)
        stages: int = 1  # 1: CE + β·hint throughout; 2: the hint alone first, then KD
        hint_epochs: int = 30  # stages=2: the epochs of the hint stage (RepDistiller's 30)
        ce_weight: float = 1.0  # stages=1: weight of the CE
        alpha: float = 0.9  # stages=2, second stage: KD's weight of the distillation term
        temperature: float = 4.0  # stages=2, second stage: KD's T
        regressor_lr: float = 0.05
        regressor_relu: bool = False

    def __init__(self, networks, teacher: nn.Module, **params) -> None:
        super().__init__(networks, teacher, **params)
        k = self.params.hint_stage
        channels = {"teacher": getattr(teacher, "stage_channels", None)}
        channels.update({n: getattr(net, "stage_channels", None) for n, net in networks.items()})
        for name, stages in channels.items():
            if stages is None:
                raise ValueError(f"fitnet needs networks with stage_channels; {name} has none")
            if k > len(stages):
                raise ValueError(
                    f"hint_stage={k}, but {name} has {len(stages)} stages: choose 1…{len(stages)}"
                )
        relu = self.params.regressor_relu
        self.auxiliary["regressors"] = nn.ModuleDict(
            {n: regressor(channels[n][k - 1], channels["teacher"][k - 1], relu) for n in networks}
        )

    def validate(self):
        p = self.params
        for name in ("beta", "ce_weight"):
            check_weight(name, getattr(p, name))
        if not 0 <= p.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {p.alpha}")
        check_temperature("temperature", p.temperature)
        check_temperature("regressor_lr", p.regressor_lr)
        if p.stages not in (1, 2):
            raise ValueError(f"stages must be 1 (CE + hint) or 2 (hint, then KD), got {p.stages}")
        if p.hint_stage < 1 or p.hint_epochs < 1:
            raise ValueError("hint_stage and hint_epochs count from 1")

    def auxiliary_optimizers(self):
        params = self.auxiliary["regressors"].parameters()
        sgd = dict(momentum=0.9, nesterov=True, weight_decay=5e-4)
        return {"regressors": torch.optim.SGD(params, lr=self.params.regressor_lr, **sgd)}

    def in_hint_stage(self, epoch: int) -> bool:
        """Whether ``epoch`` (from 1) trains the hint alone: the first stage of two."""
        return self.params.stages == 2 and epoch <= self.params.hint_epochs

    def fitnet_terms(self, name, logits, feature, teacher_logits, teacher_feature, y, epoch):
        """The named terms of student ``name``: its logits, its map at the hinted stage, the
        teacher's (detached) logits and map, the labels and the epoch (from 1)."""
        p = self.params
        if p.stages == 2 and not self.in_hint_stage(epoch):  # the second stage: KD
            return {
                "ce": (1 - p.alpha) * self.ce(logits, y),
                "kd": p.alpha * kd_loss(logits, teacher_logits, p.temperature),
            }
        hint = p.beta * hint_loss(self.auxiliary["regressors"][name](feature), teacher_feature)
        if self.in_hint_stage(epoch):
            return {"hint": hint}
        return {"ce": p.ce_weight * self.ce(logits, y), "hint": hint}

    def training_step(self, x, y, update, *, epoch=1, step=0):
        k = self.params.hint_stage - 1
        with torch.no_grad():
            teacher_logits, teacher_maps = self.frozen["teacher"](x, return_features=True)
        terms = {}
        for name, student in self.networks.items():
            logits, maps = student(x, return_features=True)
            terms[name] = self.fitnet_terms(
                name, logits, maps[k], teacher_logits, teacher_maps[k], y, epoch
            )
        update(terms, also_step=("regressors",))
        return {}
