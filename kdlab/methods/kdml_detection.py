"""One teacher and N ≥ 2 peer students for object detection: KD + ML on shared regions
(METHODS.md §10).

What changes from classification (``kdml``, METHODS.md §6): a detector does not give one
distribution per image but one per *region* (RoI), and two detectors propose different
regions. So the soft targets are taken on the **student's own sampled proposals**: each
student's RoIs of this batch (its RPN's proposals and the ground-truth boxes, sampled as for
its box-head loss) are pooled from every network's own FPN features by that network's own
RoIAlign and read by that network's own box head, which gives the teacher's and every peer's
class logits on the *same* regions (as mdistiller's detection KD runs the teacher's box head
on the student's proposals). The ``SETUPS`` (KD + ML, KD only, ML only) are those of ``kdml``.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from ..losses import kd_loss, mutual_kl
from ..models.detection import DetectorPass, box_head_logits, detector_pass
from .base import check_temperature, check_weight, register
from .kdml import SETUPS, TeacherAndStudents

__all__ = ["DetectionTeacherAndPeers", "SETUPS", "DETECTOR_LOSSES", "region_logits", "region_terms"]

DETECTOR_LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
"""torchvision's four Faster R-CNN losses, logged under these names for every trained network."""


def _split_rows(rows: torch.Tensor, counts: list[list[int]]) -> list[torch.Tensor]:
    """Rows ordered image by image, set by set (``counts[set][image]``) → one tensor per set,
    its rows in image order."""
    sets, images = len(counts), len(counts[0])
    chunks = rows.split([counts[s][i] for i in range(images) for s in range(sets)])
    return [torch.cat([chunks[i * sets + s] for i in range(images)]) for s in range(sets)]


def region_logits(
    network: nn.Module, own: DetectorPass, name: str, regions: dict[str, list[torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """``network``'s class logits on its own sampled proposals and on every other owner's.

    ``own``: the network's :class:`DetectorPass` (its FPN maps, and its sampled proposals when
    it is trained); ``regions``: the regions to classify by their owner (the students' sampled
    proposals, one R_b×4 tensor per image each). Every set is pooled from the network's own
    features by its own RoIAlign and read by its own box head: its own proposals with the
    graph (its detector loss trains it), the others' without (they are soft targets, ``sg``
    by construction: and RoIAlign's backward, the dearest part of a step on a CPU, then runs
    on its own regions only). Returns ``logits[owner]`` (R_owner × C, rows image by image;
    ``logits[name]`` for its own proposals) and its box deltas on its own proposals (None for
    a network that samples none: a frozen teacher).
    """
    logits: dict[str, torch.Tensor] = {}
    deltas = None
    if own.proposals:
        logits[name], deltas = box_head_logits(network, own.features, own.image_sizes,
                                               own.proposals)  # fmt: skip
    others = [owner for owner in regions if owner != name]
    if others:
        counts = [[len(b) for b in regions[o]] for o in others]
        per_image = [torch.cat([regions[o][i] for o in others]) for i in range(len(counts[0]))]
        with torch.no_grad():
            z, _ = box_head_logits(network, own.features, own.image_sizes, per_image)
        logits.update(zip(others, _split_rows(z, counts), strict=True))
    return logits, deltas


def region_terms(
    z: torch.Tensor,
    z_teacher: torch.Tensor | None,
    z_peers: list[torch.Tensor],
    alpha: float,
    beta: float,
    temperature: float,
) -> dict[str, torch.Tensor]:
    """One student's distillation terms on its regions R (``z``: its R×C class logits):
    ``kd = α · T² · KL(sg p_t^T ‖ p_s^T)`` (``z_teacher``: the teacher's logits on the same
    regions; no term without a teacher) and ``ml = β · 1/(N − 1) · Σ_j KL(sg p_sj ‖ p_s)``
    (``z_peers``: each peer's logits on the same regions, at T = 1). Each KL is summed over the
    classes (background included) and averaged over the regions."""
    terms = {}
    if z_teacher is not None:
        terms["kd"] = alpha * kd_loss(z, z_teacher, temperature)
    terms["ml"] = beta * sum(mutual_kl(z, peer) for peer in z_peers) / len(z_peers)
    return terms


@register
class DetectionTeacherAndPeers(TeacherAndStudents):
    """One teacher and N ≥ 2 student detectors trained together, KD + ML on shared regions.

    Per batch every network runs its transform, backbone and (when trained) RPN and RoI
    sampling once (:func:`kdlab.models.detection.detector_pass`), and its box head on its own
    sampled proposals and, without a graph, on the other students' (:func:`region_logits`);
    one ``update`` trains them all.
    With ``z_n(r)`` network n's class logits (background + classes) on region r, and ``R_i`` the
    regions sampled by student i this batch (every image of the batch):

    - student i: its detector losses (``loss_objectness``, ``loss_rpn_box_reg``,
      ``loss_classifier`` = ``CE(labels, z_si)`` over ``R_i`` with the recipe's label
      smoothing, ``loss_box_reg``) + ``kd = α · T² · KL(sg p_t^T ‖ p_si^T)`` + ``ml = β ·
      1/(N − 1) · Σ_{j≠i} KL(sg p_sj ‖ p_si)``, each KL summed over the C classes and averaged
      over the |R_i| regions (``kd_loss``, ``mutual_kl``: batchmean over regions); the peers'
      term is at T = 1, the teacher's at T with the T² factor;
    - teacher, online (default): its four detector losses on its own sampled proposals; frozen
      (``pretrained_teacher=True``, a trained network or checkpoint given as ``teacher``): no
      loss, forwarded in eval mode without a graph, its backbone and box head only.

    Every target is detached (``sg``): no student term reaches the teacher or a peer.
    Settings (:data:`SETUPS`, the paper's comparison): KD + ML = the defaults; KD only =
    ``beta=0``; ML only = ``use_teacher=False`` (no teacher kept, trained or evaluated).

    Reported: the teacher, every student, and the students' ensemble (boxes fused by weighted
    boxes fusion, :mod:`kdlab.tasks.detection`).
    """

    name = "kdml_det"
    teacher_kind = "detector"
    role = "student"
    teacher_mode = "online"
    min_networks = 2
    tasks = ("detection",)

    @dataclasses.dataclass
    class Params:
        alpha: float = 1.0  # weight of the teacher's term (KD), on top of the detector losses
        beta: float = 1.0  # weight of the peers' term (ML)
        temperature: float = 4.0  # T of the teacher's term
        pretrained_teacher: bool = False  # freeze the given (trained) teacher: offline KD + ML
        use_teacher: bool = True  # False: ML only, no teacher at all

    def validate(self) -> None:
        p = self.params
        check_weight("alpha", p.alpha)
        check_weight("beta", p.beta)
        check_temperature("temperature", p.temperature)
        if p.pretrained_teacher and not p.use_teacher:
            raise ValueError("pretrained_teacher needs use_teacher=True")

    # -- one batch ------------------------------------------------------------------------------
    def forward_regions(self, images, targets):
        """``(passes, logits, deltas)`` of one batch: every network's
        :class:`~kdlab.models.detection.DetectorPass`, its :func:`region_logits` on its own
        and every student's sampled proposals (``logits[network][owner]``) and its box deltas
        on its own (``deltas[network]``, trained networks only). A frozen teacher runs without
        a graph and samples no proposals."""
        everyone = {"teacher": self.teacher} if self.teacher is not None else {}
        everyone.update({name: self.networks[name] for name in self.students})
        passes, logits, deltas = {}, {}, {}
        for name, net in everyone.items():
            with torch.no_grad() if name in self.frozen else contextlib.nullcontext():
                passes[name] = detector_pass(net, images, targets, sample=name not in self.frozen)
        if len({tuple(map(tuple, p.image_sizes)) for p in passes.values()}) > 1:
            raise ValueError("the detectors see the images at different sizes: none may resize")
        regions = {name: passes[name].proposals for name in self.students}
        for name, net in everyone.items():
            with torch.no_grad() if name in self.frozen else contextlib.nullcontext():
                logits[name], own = region_logits(net, passes[name], name, regions)
            if own is not None:
                deltas[name] = own
        return passes, logits, deltas

    def _detector_losses(self, name, passes, logits, deltas) -> dict[str, torch.Tensor]:
        from torchvision.models.detection.roi_heads import fastrcnn_loss

        own = passes[name]
        labels = torch.cat(own.labels)
        z = logits[name][name]
        _, box_loss = fastrcnn_loss(z, deltas[name], own.labels, own.regression_targets)
        terms = {"loss_classifier": self.ce(z, labels), "loss_box_reg": box_loss}
        terms.update(own.losses)
        return {k: terms[k] for k in DETECTOR_LOSSES}

    def training_step(self, x, y, update, *, epoch=1, step=0):
        p = self.params
        passes, logits, deltas = self.forward_regions(x, y)
        terms: dict[str, dict[str, torch.Tensor]] = {}
        if "teacher" in self.networks:
            terms["teacher"] = self._detector_losses("teacher", passes, logits, deltas)
        for name in self.students:
            own = self._detector_losses(name, passes, logits, deltas)
            teacher = logits["teacher"][name] if self.teacher is not None else None
            peers = [logits[other][name] for other in self.students if other != name]
            z = logits[name][name]  # student i's logits on its own regions R_i
            own.update(region_terms(z, teacher, peers, p.alpha, p.beta, p.temperature))
            terms[name] = own
        update(terms)
        return {}
