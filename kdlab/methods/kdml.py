"""One teacher and N ≥ 2 peer students trained together: KD + ML (METHODS.md §6).

Niyaz & Bathula (2021), "Augmenting knowledge distillation with peer-to-peer mutual learning":
the students learn from the labels, from the teacher (knowledge distillation, KD) and from each
other (mutual learning, ML), while the teacher trains alongside them (online distillation). The
paper's claim is about the *ensemble of the students*: trained with KD + ML it beats the
ensembles trained with KD alone or ML alone. The three set-ups are settings of this one method
(:data:`SETUPS`): KD + ML (the defaults), KD only (``beta=0``), ML only (``use_teacher=False``).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import kd_loss, mutual_kl
from .base import Method, check_choice, check_temperature, check_weight, register

__all__ = ["TeacherAndPeers", "TeacherAndStudents", "SETUPS", "feature_mse"]

SETUPS: dict[str, dict] = {
    "KD + ML": {},
    "KD only": {"beta": 0.0},
    "ML only": {"use_teacher": False},
}
"""The paper's three set-ups as parameter overrides of ``kdml`` (same seeds, same networks)."""


def feature_mse(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``MSE(source, sg target)``, averaged over every element (batch, channels, positions).

    ``source`` is the learner's feature map after its 1×1 adapter, so the channel counts match;
    where the spatial sizes differ, both maps are average-pooled to the smaller size first.
    The target is detached: this term trains the learner (and its adapter) only.
    """
    source, target = source.float(), target.detach().float()
    if source.shape[-2:] != target.shape[-2:]:
        size = tuple(min(a, b) for a, b in zip(source.shape[-2:], target.shape[-2:], strict=True))
        source = F.adaptive_avg_pool2d(source, size)
        target = F.adaptive_avg_pool2d(target, size)
    return F.mse_loss(source, target)


class TeacherAndStudents(Method):
    """What the teacher-and-peers methods share (``kdml``, ``kdml_det``): N ≥ 2 students, none
    named ``teacher``, and the teacher placed as the settings say (``Params`` has
    ``use_teacher`` and ``pretrained_teacher``): none with ``use_teacher=False`` (ML only);
    frozen (no gradient, not trained, not reported) with ``pretrained_teacher``; else trained
    online by the loop with the students, reported first. The students' ensemble is reported."""

    teacher_kind = "network"  # what the teacher is, in the error for a missing one

    def __init__(self, networks, teacher: nn.Module | None = None, **params) -> None:
        students = dict(networks)
        if len(students) < 2:
            raise ValueError(
                f"{self.name} needs N ≥ 2 students, got {len(students)}: give two or more models"
            )
        if "teacher" in students:
            raise ValueError("name the students student1, student2…; 'teacher' is the teacher's")
        super().__init__(students, **params)
        self.students: list[str] = list(students)
        p = self.params
        if not p.use_teacher:
            return
        if teacher is None:
            raise ValueError(
                f"{self.name} needs a teacher {self.teacher_kind} (or use_teacher=False: ML only)"
            )
        if p.pretrained_teacher:
            teacher.requires_grad_(False)
            self.frozen["teacher"] = teacher
        else:
            self.networks = nn.ModuleDict({"teacher": teacher, **students})

    @property
    def teacher(self) -> nn.Module | None:
        """The teacher (trained online or frozen), or None for ML only."""
        if "teacher" in self.networks:
            return self.networks["teacher"]
        return self.frozen["teacher"] if "teacher" in self.frozen else None

    def ensemble_members(self) -> list[str]:
        """The students only: the ensemble the paper reports is the students'."""
        return list(self.students)


@register
class TeacherAndPeers(TeacherAndStudents):
    """One teacher and N ≥ 2 students trained together online, KD + ML (METHODS.md §6).

    Per batch every network is forwarded once, and one ``update`` trains them all:

    - teacher: ``L_t = CE(y, z_t)``; with ``teacher_learns_from_students`` also
      ``+ λ_back · mean_i KL(sg p_si ‖ p_t)`` (logged as ``back``, at T = 1);
    - student i: ``L_si = CE(y, z_si) + α · T² · KL(sg p_t^T ‖ p_si^T)
      + β · 1/(N − 1) · Σ_{j≠i} KL(sg p_sj ‖ p_si)``, logged as the weighted terms ``ce``,
      ``kd`` and ``ml``. The mutual term is at T = 1, the teacher's at T with the T² factor.

    ``KL(p‖q)`` is batchmean; every target (``sg``) is detached, so a student's terms never
    send gradient into the teacher or another student, and the teacher's ``back`` term never
    into a student. α weights the teacher's term *on top of* the cross-entropy (not the
    ``(1 − α)·CE`` convention of the ``kd`` method).

    Settings (the paper's comparison, :data:`SETUPS`): KD + ML = the defaults; KD only =
    ``beta=0``; ML only = ``use_teacher=False`` — the teacher is then neither kept, trained nor
    evaluated, and the students' loss has no ``kd`` term (α is unused). ``pretrained_teacher``
    freezes an already-trained teacher (a checkpoint path or a network given as ``teacher``) in
    ``frozen``: offline KD + ML.

    ``styles="different"`` (the "learning styles" follow-up, arXiv 2212.02931; a
    reconstruction): odd-numbered students (``student1``, ``student3``…) learn from the teacher's
    predictions as above, even-numbered ones from its last-stage feature map instead,
    ``kd = α · MSE(A_i(f_si), sg f_t)`` through a 1×1 convolution adapter ``A_i``; and the
    students exchange features as well as predictions, ``feat = β · 1/(N − 1) ·
    Σ_{j≠i} MSE(A_ij(f_si), sg f_sj)``. The adapters live in ``auxiliary["adapters"]`` and are
    stepped in the same update as the students (Adam, ``adapter_lr``).

    Reported: the teacher, every student, and the ensemble of the *students* (mean of their
    softmax outputs); agreement is measured between pairs of students.
    """

    name = "kdml"
    role = "student"
    teacher_mode = "online"
    min_networks = 2

    @dataclasses.dataclass
    class Params:
        alpha: float = 1.0  # weight of the teacher's term (KD), on top of the CE
        beta: float = 1.0  # weight of the peers' term (ML)
        temperature: float = 4.0  # T of the teacher's term
        teacher_learns_from_students: bool = False
        lam_back: float = 1.0  # weight of the teacher's term from the students
        pretrained_teacher: bool = False  # freeze the given (trained) teacher: offline KD + ML
        use_teacher: bool = True  # False: ML only, no teacher at all
        styles: str = "same"  # "same" | "different" (learning styles: predictions vs features)
        adapter_lr: float = 1e-3  # Adam learning rate of the 1×1 adapters (styles="different")

    def __init__(self, networks, teacher: nn.Module | None = None, **params) -> None:
        super().__init__(networks, teacher, **params)
        p = self.params
        if p.styles == "different":
            self.auxiliary["adapters"] = self._build_adapters(teacher if p.use_teacher else None)

    # -- set-up ---------------------------------------------------------------------------------
    def validate(self) -> None:
        p = self.params
        for name in ("alpha", "beta", "lam_back"):
            check_weight(name, getattr(p, name))
        check_temperature("temperature", p.temperature)
        check_temperature("adapter_lr", p.adapter_lr)
        check_choice("styles", p.styles, ("same", "different"))
        if p.teacher_learns_from_students and (p.pretrained_teacher or not p.use_teacher):
            raise ValueError(
                "teacher_learns_from_students needs a teacher trained online "
                "(use_teacher=True, pretrained_teacher=False)"
            )
        if p.pretrained_teacher and not p.use_teacher:
            raise ValueError("pretrained_teacher needs use_teacher=True")

    def _learns_features(self, index: int) -> bool:
        """With ``styles="different"``: student2, student4… learn from the teacher's features."""
        return self.params.styles == "different" and index % 2 == 1

    def _build_adapters(self, teacher: nn.Module | None) -> nn.ModuleDict:
        """1×1 convolutions from a learner's last-stage channels to its target's, by
        ``"<learner>_to_<target>"``."""

        def channels(net: nn.Module) -> int:
            if not hasattr(net, "feature_dim"):
                raise ValueError("styles='different' needs networks with a feature_dim attribute")
            return net.feature_dim

        adapters = nn.ModuleDict()
        for i, name in enumerate(self.students):
            c_in = channels(self.networks[name])
            if teacher is not None and self._learns_features(i):
                adapters[f"{name}_to_teacher"] = nn.Conv2d(c_in, channels(teacher), 1)
            for other in self.students:
                if other != name:
                    c_out = channels(self.networks[other])
                    adapters[f"{name}_to_{other}"] = nn.Conv2d(c_in, c_out, 1)
        return adapters

    def auxiliary_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if "adapters" not in self.auxiliary:
            return {}
        params = self.auxiliary["adapters"].parameters()
        return {"adapters": torch.optim.Adam(params, lr=self.params.adapter_lr)}

    # -- one batch --------------------------------------------------------------------------------
    def training_step(self, x, y, update, *, epoch=1, step=0):
        p = self.params
        features = p.styles == "different"
        n = len(self.students)

        def forward(net: nn.Module):
            out = net(x, return_features=True) if features else net(x)
            return out if features else (out, None)

        teacher = self.teacher
        z_t = f_t = None
        if teacher is not None:
            frozen = "teacher" in self.frozen
            with torch.no_grad() if frozen else contextlib.nullcontext():
                z_t, f_t = forward(teacher)
        logits, maps = {}, {}
        for name in self.students:
            logits[name], maps[name] = forward(self.networks[name])

        terms: dict[str, dict[str, torch.Tensor]] = {}
        adapters = self.auxiliary["adapters"] if features else None
        for i, name in enumerate(self.students):
            z = logits[name]
            own = {"ce": self.ce(z, y)}
            if z_t is not None:
                if self._learns_features(i):
                    adapted = adapters[f"{name}_to_teacher"](maps[name][-1])
                    own["kd"] = p.alpha * feature_mse(adapted, f_t[-1])
                else:
                    own["kd"] = p.alpha * kd_loss(z, z_t, p.temperature)
            peers = [other for other in self.students if other != name]
            own["ml"] = p.beta * sum(mutual_kl(z, logits[o]) for o in peers) / (n - 1)
            if features:
                mse = [
                    feature_mse(adapters[f"{name}_to_{o}"](maps[name][-1]), maps[o][-1])
                    for o in peers
                ]
                own["feat"] = p.beta * sum(mse) / (n - 1)
            terms[name] = own
        if teacher is not None and "teacher" in self.networks:
            own = {"ce": self.ce(z_t, y)}
            if p.teacher_learns_from_students:
                own["back"] = p.lam_back * sum(mutual_kl(z_t, logits[s]) for s in self.students) / n
            terms = {"teacher": own, **terms}
        if features:  # the adapters have no terms of their own: their gradient is the students'
            update(terms, also_step=("adapters",))
        else:
            update(terms)
        return {}
