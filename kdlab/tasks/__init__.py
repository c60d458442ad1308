"""Tasks: what a batch is, how networks are evaluated, and which number scores them.

A data set knows its task (``dataset.task``); the one training loop (:func:`kdlab.fit`) asks
the task for its loaders and its evaluation and never branches on a data set's name:

- ``train, test = task.loaders(dataset, config, device, channels_last=…)``: ``train`` yields the
  ``(x, y)`` batches a method's ``training_step(x, y, update, …)`` receives (it has ``len()``,
  ``min_batch_size`` and ``state_dict()`` / ``load_state_dict()`` for checkpoints); ``test`` is
  whatever ``evaluate`` reads. A task with ``multi_view = True`` also takes ``views=V`` (the
  loop passes it only when the method asks for V > 1, :attr:`kdlab.Method.views`): its train
  batches then hold a tuple of V independently augmented views of the same images.
- ``task.evaluate(networks, test, ensemble)``: the record of one epoch's test metrics, keyed
  ``<metric>/<network>`` (and ``<metric>/ensemble`` for the members named in ``ensemble``), in
  float32 and without building a graph.
- ``task.metric``: the headline metric's key, e.g. ``acc`` (top-1 accuracy, percent) or ``map``
  (mean average precision, percent): a run's history, its summary (``final_<metric>``,
  ``best_<metric>``) and the grids' tables report it; ``task.metrics`` are every per-network
  metric the summary keeps the last value of.
- ``task.model_kind``: the kind of network the task trains (:func:`kdlab.models.model_kind`).
- Pairwise records: ``agree/<a>-<b>`` is the peers' agreement in percent *as the task defines
  it* (classification: the same top-1 prediction; retrieval: the overlap of their top-10
  retrieved lists), so a run summary's ``agreement`` and the grids' tables read every task's
  under one key; a task may add pairwise metrics of its own (classification's ``js/<a>-<b>``).

Methods whose terms are on logits and features stay task-blind (DML on identity logits is DML);
a method says which tasks it trains in ``Method.tasks``.

- :mod:`.classification`: top-1 accuracy, the ensemble (mean softmax), agreement and JS.
- :mod:`.retrieval`: person re-identification, trained on identity labels and scored by mAP
  and CMC on the embedding before the classifier (Market-1501's protocol), the ensemble
  (concatenated normalised embeddings) and the overlap of the peers' top-10 lists.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import nn

__all__ = ["TASKS", "Task", "get_task", "register_task"]


class Task:
    """Base class of every task (see the module docstring for the contract)."""

    name: ClassVar[str] = "task"
    metric: ClassVar[str] = "acc"  # the headline metric's key prefix in a record
    metric_label: ClassVar[str] = "top-1 accuracy (%)"
    model_kind: ClassVar[str] = "classifier"
    channels_last: ClassVar[bool] = True  # batches are 4-D image tensors that may go NHWC
    multi_view: ClassVar[bool] = False  # loaders(…, views=V) gives V augmented views per image

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every per-network metric whose last value a run's summary keeps (headline first)."""
        return (self.metric,)

    def loaders(self, dataset: Any, config: Any, device: Any, *, channels_last: bool = False):
        """``(train, test)`` for ``dataset`` on ``device`` with the recipe ``config``."""
        raise NotImplementedError

    def evaluate(
        self, networks: Mapping[str, nn.Module], test: Any, ensemble: Sequence[str] = ()
    ) -> dict[str, float]:
        """One epoch's test metrics of ``networks`` (every one in float32, in eval mode, with
        no graph), ``ensemble`` naming the members of the reported ensemble."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available by its ``name``."""
    taken = TASKS.get(cls.name)
    if taken is not None and taken is not cls:
        raise ValueError(f"task name {cls.name!r} is taken by {taken.__module__}")
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    """The task class registered under ``name``; ValueError listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
