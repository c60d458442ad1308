"""Profiles: how big a run is, chosen once (``KDLAB_PROFILE``) for every notebook and command.

- ``smoke``: seconds on a CPU, for the tests (digits, a few hundred images, 2 epochs, one seed).
- ``lab`` (the default): one Colab T4 session per notebook. CIFAR-10 where it is available
  (cached in ``data/`` or downloadable) and a GPU is there, otherwise the embedded digits set-up:
  on a CPU, a request for more than :data:`CPU_IMAGE_BUDGET` training images per network (the
  profile's 15 epochs are 750,000) gets minutes of digits rather than hours of CIFAR, with a
  note computed from what was asked; a smaller one (``epochs=1``) keeps CIFAR-10, and so does
  ``dataset="cifar10"`` named explicitly.
- ``paper``: the published schedule of METHODS.md §3 (CIFAR-100, 200 epochs, lr 0.1 ÷10 at 60,
  120, 180, batch 64, three seeds), for a GPU.

A profile that shrinks a recipe scales its milestones itself (:meth:`Profile.milestones_for`):
a :class:`~kdlab.train.TrainConfig` takes its milestones as given.

Each task has its own three (:data:`TASK_PROFILES`): person re-identification (``retrieval``)
runs the smoke and lab profiles on the embedded ``reid_digits`` set and the paper profile on
Market-1501 with DML's own recipe (METHODS.md §9).

The embedded digits set-up is chosen so that distillation has room to show: the student
(``cnn_tiny``, a few thousand parameters) trained alone on a 200-image subset stays several
points below its teacher (``resnet20``).

Other tasks have their own three profiles (:data:`TASK_PROFILES`): detection's smoke and lab
train CPU-sized detectors on the embedded *synthetic* polyps, its paper profile COCO-pretrained
torchvision detectors on Kvasir-SEG.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .config import TrainConfig
from .data import DatasetNotFoundError, ImageDataset, load_dataset
from .messages import say
from .optim import scale_milestones
from .train import pick_device

__all__ = ["Profile", "PROFILES", "TASK_PROFILES", "profile", "profile_name"]


@dataclasses.dataclass
class Profile:
    """The sizes of a run. Any field can be overridden (papermill parameters, ``--set``)."""

    name: str
    dataset: str
    epochs: int
    batch_size: int
    lr: float
    schedule: str
    seeds: tuple[int, ...]
    teacher: str  # the teacher's architecture
    student: str  # the students' / peers' architecture
    train_size: int | None = None  # a fixed class-balanced subset of the training split
    fallback_dataset: str | None = None  # used when ``dataset`` is absent and offline
    fallback: dict[str, Any] = dataclasses.field(default_factory=dict)
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] | None = None  # epochs of a run of ``epochs``; None: DML's
    precision: str = "auto"  # "auto", "fp32", "bf16", "fp16"
    overridden: tuple[str, ...] = ()  # fields set explicitly: a fallback leaves them alone
    needs_gpu: bool = False  # without a GPU, take the fallback rather than train for hours
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adam" (betas)
    betas: tuple[float, ...] = (0.9, 0.999)  # Adam's (β1, β2)
    label_smoothing: float = 0.0  # ε of every method's cross-entropy with the label

    def milestones_for(self, epochs: int) -> tuple[int, ...]:
        """The step schedule's milestones for a run of ``epochs`` epochs of this profile.

        ``milestones`` are epochs of a run of the profile's ``epochs``, as given when the run
        has that length; ``None`` is DML's recipe, ÷10 after epochs 60, 120 and 180 of 200
        (METHODS.md §3). A run of another length gets them scaled explicitly
        (:func:`kdlab.optim.scale_milestones`): e.g. ``(9, 18, 27)`` for 30 epochs of DML's.
        """
        if self.milestones is None:
            recipe = TrainConfig()  # DML's recipe: its milestones are for its 200 epochs
            return scale_milestones(recipe.milestones, recipe.epochs, epochs)
        return scale_milestones(tuple(self.milestones), self.epochs, epochs)

    def train_config(self, seed: int = 0, **overrides: Any) -> TrainConfig:
        """The :class:`~kdlab.train.TrainConfig` of this profile for one seed.

        ``overrides`` are TrainConfig fields; given ``epochs`` without ``milestones`` (a
        widget's shorter run), the milestones are :meth:`milestones_for` those epochs. Under
        another schedule than ``step`` the milestones are read by nothing, and DML's are
        left as TrainConfig's default unless the profile names its own.
        """
        epochs = overrides.get("epochs", self.epochs)
        schedule = overrides.get("schedule", self.schedule)
        values = dict(
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            schedule=self.schedule,
            weight_decay=self.weight_decay,
            precision=self.precision,
            optimizer=self.optimizer,
            betas=tuple(self.betas),
            label_smoothing=self.label_smoothing,
            seed=seed,
        )
        if schedule == "step" or self.milestones is not None:
            values["milestones"] = self.milestones_for(epochs)
        values.update(overrides)
        return TrainConfig(**values)

    def load(self, root: str | None = None) -> tuple[Profile, ImageDataset]:
        """The profile that applies and its dataset, without changing this profile::

            cfg, data = kdlab.profile().load()

        ``(self, dataset)`` normally. Where the profile has a fallback and its dataset is absent
        offline, or the profile is sized for a GPU (``needs_gpu``), there is none, and what it
        asks of the CPU is more than :data:`CPU_IMAGE_BUDGET` training images: a *copy*
        of the profile with the fallback's set-up (its dataset, sizes and networks; the fields
        set explicitly are kept) and the fallback dataset, with a printed note.
        """
        note = None
        if self.needs_gpu and self.fallback_dataset and pick_device().type == "cpu":
            images, slow, fast = self.cpu_cost()
            size = (
                f"{self.dataset} for {self.epochs} epoch(s) is {images:,} training images per "
                f"network: about {_duration(images / fast)} to {_duration(images / slow)} for "
                f"each ResNet-20 on a CPU ({slow}–{fast} images/s, by CPU)"
            )
            if images > CPU_IMAGE_BUDGET:
                return self._fall_back(
                    f"no GPU here: {size}; "
                    + say("name the dataset to train it anyway ({dataset=" + self.dataset + "})"),
                    root,
                )
            note = f"no GPU here: {size}"
        try:
            dataset = load_dataset(self.dataset, root, train_size=self.train_size)
        except DatasetNotFoundError as error:
            if not self.fallback_dataset:
                raise
            return self._fall_back(str(error), root)
        if note:
            print(note, flush=True)
        return self, dataset

    def cpu_cost(self) -> tuple[int, int, int]:
        """What this profile asks of a CPU: training images per network (epochs × the training
        set or ``train_size``) and the range of :data:`CPU_IMAGES_PER_SECOND`."""
        per_epoch = self.train_size or TRAIN_IMAGES.get(self.dataset, 50_000)
        return self.epochs * per_epoch, *CPU_IMAGES_PER_SECOND

    def _fall_back(self, reason: str, root: str | None) -> tuple[Profile, ImageDataset]:
        print(f"{reason}\n→ the {self.name!r} profile uses {self.fallback_dataset!r} instead.")
        kept = {k: v for k, v in self.fallback.items() if k not in self.overridden}
        chosen = dataclasses.replace(
            self, **kept, dataset=self.fallback_dataset, fallback_dataset=None
        )
        return chosen, load_dataset(chosen.dataset, root, train_size=chosen.train_size)

    def load_dataset(self, root: str | None = None) -> ImageDataset:
        """The dataset of :meth:`load` (the fallback's, where it applies), without changing this
        profile: :meth:`load` also returns the settings that go with a fallback."""
        return self.load(root)[1]


# A profile sized for a GPU (lab: CIFAR-10) falls back to its CPU set-up when asked for more
# than this many training images per network on a CPU (two epochs of CIFAR-10). A ResNet-20
# trains at CPU_IMAGES_PER_SECOND on a CPU: 50 was measured on 2 shared cores of an AMD EPYC in
# fp32 (2026-11-30); the README's Performance table has a ResNet-32 at 405 (fp32) to 721 (bf16)
# images/s on 2 idle cores of a Xeon with AMX, and a ResNet-20 is faster. So two epochs take
# minutes to half an hour, and the lab profile's 15 epochs of 50,000 images, for each of a
# notebook's runs and seeds, 20 minutes to 4 hours.
CPU_IMAGE_BUDGET = 100_000
CPU_IMAGES_PER_SECOND = (50, 700)
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000}  # training split sizes


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


_DIGITS_LAB = dict(
    epochs=30, batch_size=64, lr=0.05, schedule="cosine", train_size=200,
    teacher="resnet20", student="cnn_tiny",
)  # fmt: skip

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke", "digits", epochs=2, batch_size=64, lr=0.05, schedule="cosine", seeds=(0,),
        teacher="cnn_small", student="cnn_tiny", train_size=300,
    ),
    "lab": Profile(
        "lab", "cifar10", epochs=15, batch_size=128, lr=0.1, schedule="cosine", seeds=(0, 1, 2),
        teacher="resnet56", student="resnet20", fallback_dataset="digits", fallback=_DIGITS_LAB,
        needs_gpu=True,
    ),
    "paper": Profile(
        "paper", "cifar100", epochs=200, batch_size=64, lr=0.1, schedule="step",
        seeds=(0, 1, 2), teacher="resnet110", student="resnet32",
    ),
}  # fmt: skip


def profile_name(name: str | None = None) -> str:
    """``name``, else ``$KDLAB_PROFILE``, else ``"lab"``; ValueError for an unknown one."""
    name = name or os.environ.get("KDLAB_PROFILE") or "lab"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return name


# Detection (notebook 09, grid niyaz_polyp). smoke and lab: the embedded SYNTHETIC polyps (64×64)
# and the CPU-sized detectors; paper: Kvasir-SEG at 320 px, ResNet-50-FPN teacher and
# MobileNetV3-Large-FPN students from COCO weights, torchvision's detection reference recipe
# (26 epochs, weight decay 1e-4, lr 0.02 per 16 images, here 0.01 for batches of 8) with a
# cosine schedule instead of its two steps. The CPU detectors trained from scratch diverge at
# lr 0.02 (a NaN in the second epoch, measured) and learn at 0.01.
DETECTION_PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke", "synthetic_polyps", epochs=2, batch_size=8, lr=0.01, schedule="cosine",
        seeds=(0,), teacher="fasterrcnn_tiny_resnet", student="fasterrcnn_tiny_cnn",
        train_size=16, weight_decay=1e-4,
    ),
    "lab": Profile(
        "lab", "synthetic_polyps", epochs=8, batch_size=8, lr=0.01, schedule="cosine",
        seeds=(0, 1, 2), teacher="fasterrcnn_tiny_resnet", student="fasterrcnn_tiny_cnn",
        weight_decay=1e-4,
    ),
    "paper": Profile(
        "paper", "kvasir_seg", epochs=26, batch_size=8, lr=0.01, schedule="cosine",
        seeds=(0, 1, 2), teacher="fasterrcnn_resnet50_fpn_coco",
        student="fasterrcnn_mobilenet_v3_large_fpn_coco", weight_decay=1e-4,
    ),
}  # fmt: skip

# Re-identification. DML's Market-1501 recipe (its official code): Adam lr 2e-4, β1 0.5, weight
# decay 4e-5, label smoothing 0.1, batch 16, a constant rate for 200,000 steps (247 epochs of
# 12,936 images), from scratch. Its 224×224 input is Market-1501's 256×128 here.
_REID_DIGITS = dict(
    optimizer="adam", betas=(0.5, 0.999), label_smoothing=0.1, weight_decay=5e-4,
    teacher="cnn_small", student="cnn_small",
)  # fmt: skip
RETRIEVAL_PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke", "reid_digits", epochs=2, batch_size=64, lr=0.003, schedule="cosine",
        seeds=(0,), **_REID_DIGITS,
    ),
    "lab": Profile(
        "lab", "reid_digits", epochs=20, batch_size=64, lr=0.003, schedule="cosine",
        seeds=(0, 1, 2), **_REID_DIGITS,
    ),
    "paper": Profile(
        "paper", "market1501", epochs=247, batch_size=16, lr=2e-4, schedule="constant",
        seeds=(0, 1, 2), teacher="resnet50", student="mobilenetv1", optimizer="adam",
        betas=(0.5, 0.999), weight_decay=4e-5, label_smoothing=0.1,
    ),
}  # fmt: skip

TASK_PROFILES: dict[str, dict[str, Profile]] = {
    "classification": PROFILES,
    "detection": DETECTION_PROFILES,
    "retrieval": RETRIEVAL_PROFILES,
}
"""The profiles of every task (:mod:`kdlab.tasks`) by task name: each task has its own smoke, lab
and paper set-up (data set, networks, recipe) under the same three names."""


def _task_of(task: str | None, dataset: str | None) -> str:
    """``task``, else the task of ``dataset`` (a registered name), else classification; a
    ValueError when the two disagree."""
    from .data import DATASETS

    entry = DATASETS.get(dataset) if dataset else None
    if task is None:
        return entry.task if entry is not None else "classification"
    if entry is not None and entry.task != task:
        raise ValueError(
            f"dataset {dataset!r} is a {entry.task} data set, not one of the {task} profiles'"
        )
    return task


def profile(name: str | None = None, task: str | None = None, **overrides: Any) -> Profile:
    """A copy of the profile ``name`` (default: ``$KDLAB_PROFILE`` or ``lab``) of ``task``
    (default: the task of the ``dataset`` override where one is given, else classification:
    a grid cell or a command that names ``dataset="kvasir_seg"`` gets detection's recipe).

    ``overrides`` whose value is None are ignored, so a notebook's papermill parameters can
    default to None ("take the profile's value").
    """
    task = _task_of(task, overrides.get("dataset"))
    if task not in TASK_PROFILES:
        raise ValueError(f"no profiles for task {task!r}; known: {', '.join(TASK_PROFILES)}")
    base = TASK_PROFILES[task][profile_name(name)]
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in ("seeds", "milestones", "betas"):
        if key in given:
            given[key] = tuple(given[key])
    fields = {f.name for f in dataclasses.fields(Profile)}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(
            f"unknown profile setting {unknown[0]!r}; known: {', '.join(sorted(fields))}"
        )
    overridden = tuple(sorted(given))
    if given.get("dataset") and given["dataset"] == base.fallback_dataset:
        # Asking for the fallback dataset by name gives its set-up too (e.g. lab on digits).
        given = {**base.fallback, **given}
    chosen = dataclasses.replace(base, **given, overridden=overridden)
    if "dataset" in given:  # an explicit dataset has no fallback
        chosen.fallback_dataset = None
    return chosen
