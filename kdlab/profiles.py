"""Profiles: how big a run is, chosen once (``KDLAB_PROFILE``) for every notebook and command.

- ``smoke``: seconds on a CPU, for the tests (digits, a few hundred images, 2 epochs, one seed).
- ``lab`` (the default): one Colab T4 session per notebook. CIFAR-10 where it is available
  (cached in ``data/`` or downloadable), otherwise the embedded digits set-up.
- ``paper``: the published schedule of METHODS.md (CIFAR-100, 200 epochs, lr 0.1 ÷10 at 60,
  120, 180, batch 64, three seeds), for a GPU.

The embedded digits set-up is chosen so that distillation has room to show: the student
(``cnn_tiny``, a few thousand parameters) trained alone on a 200-image subset stays several
points below its teacher (``resnet20``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .data import DatasetNotFoundError, ImageDataset, load_dataset
from .train import TrainConfig

__all__ = ["Profile", "PROFILES", "profile", "profile_name"]


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
    overridden: tuple[str, ...] = ()  # fields set explicitly: a fallback leaves them alone

    def train_config(self, seed: int = 0, **overrides: Any) -> TrainConfig:
        """The :class:`~kdlab.train.TrainConfig` of this profile for one seed."""
        values = dict(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            schedule=self.schedule,
            weight_decay=self.weight_decay,
            seed=seed,
        )
        values.update(overrides)
        return TrainConfig(**values)

    def load(self, root: str | None = None) -> tuple[Profile, ImageDataset]:
        """The profile that applies and its dataset: ``(self, dataset)``, or, where the dataset
        is absent offline and the profile has a fallback, a *copy* of the profile with the
        fallback's set-up (its dataset, sizes and networks; fields set explicitly are kept) and
        the fallback dataset, with a printed note. The profile itself never changes::

            cfg, data = kdlab.profile().load()
        """
        try:
            return self, load_dataset(self.dataset, root, train_size=self.train_size)
        except DatasetNotFoundError as error:
            if not self.fallback_dataset:
                raise
            print(f"{error}\n→ the {self.name!r} profile uses {self.fallback_dataset!r} instead.")
            kept = {k: v for k, v in self.fallback.items() if k not in self.overridden}
            chosen = dataclasses.replace(
                self, **kept, dataset=self.fallback_dataset, fallback_dataset=None
            )
            return chosen, load_dataset(chosen.dataset, root, train_size=chosen.train_size)

    def load_dataset(self, root: str | None = None) -> ImageDataset:
        """The dataset of :meth:`load` (the fallback's where the profile's is absent offline),
        without changing this profile: use :meth:`load` to get the settings that go with it."""
        return self.load(root)[1]


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


def profile(name: str | None = None, **overrides: Any) -> Profile:
    """A copy of the profile ``name`` (default: ``$KDLAB_PROFILE`` or ``lab``).

    ``overrides`` whose value is None are ignored, so a notebook's papermill parameters can
    default to None ("take the profile's value").
    """
    base = PROFILES[profile_name(name)]
    given = {k: v for k, v in overrides.items() if v is not None}
    if "seeds" in given:
        given["seeds"] = tuple(given["seeds"])
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
