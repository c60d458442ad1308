"""One training epoch: the method's steps, the ``update`` it calls, and the epoch's means.

Per batch the method computes named loss terms and calls ``update(terms)`` (once or more, see
:class:`Updater`). The loop adds every term to the epoch's sums on the device and transfers
the means to the host once, at the end of the epoch, where a NaN or infinite loss stops the run.

The gradient scaler (fp16) is updated once per batch, after the method's last ``update`` call,
whatever the number of optimizers or calls: PyTorch's AMP rule (one ``scaler.update()`` per
iteration, after every optimizer has stepped). Updating after each call would move the scale's
growth counter twice as fast for ADML (discriminators, then peers) as for DML.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from .methods import Method
from .precision import Precision

__all__ = ["Updater", "train_epoch", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the run stopped, the last good checkpoint is kept."""


class Updater:
    """The ``update`` a method's :meth:`~kdlab.methods.Method.training_step` calls.

    ``update({name: {term: value, ...}, ...}, also_step=())`` zeroes the gradients of every
    named module, backpropagates the *sum* of every term (scaled by the gradient scaler under
    fp16), steps the optimizer of each named module and of each module in ``also_step``, and
    no other. ``also_step`` names modules with no loss term of their own whose gradient comes
    through the named terms (kdml's feature adapters, trained by the students' terms).
    Every term is logged as ``loss/<name>/<term>`` (its mean over the epoch).

    The scaler is not updated here: :meth:`end_batch` does it once the method's step is over
    (:func:`train_epoch` calls it after every batch). Every ``update`` call of one batch thus
    uses the same scale, and one overflow in any of them lowers it once. A method that steps
    the same optimizer twice in a batch gets an update between the two (a scaler steps each
    optimizer at most once per update).
    """

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer], scaler) -> None:
        self.optimizers = optimizers
        self.scaler = scaler
        self.sums: dict[str, torch.Tensor] = {}
        self.pending: set[int] = set()  # ids of the optimizers stepped since the last update

    def log(self, key: str, value: torch.Tensor) -> None:
        """Add a per-batch value to the epoch's sum of ``key`` (on the device, detached)."""
        value = value.detach().float()
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def _optimizer(self, name: str) -> torch.optim.Optimizer:
        if name not in self.optimizers:
            known = ", ".join(self.optimizers)
            raise KeyError(f"update() names {name!r}, which has no optimizer; known: {known}")
        return self.optimizers[name]

    def __call__(
        self, terms: Mapping[str, Mapping[str, torch.Tensor]], *, also_step: Sequence[str] = ()
    ) -> None:
        names = dict.fromkeys([*terms, *also_step])  # each module once, in order
        stepped = [self._optimizer(name) for name in names]
        if any(id(optimizer) in self.pending for optimizer in stepped):
            self.end_batch()
        for optimizer in stepped:
            optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for name, named in terms.items():
            for term, value in named.items():
                total = total + value
                self.log(f"loss/{name}/{term}", value)
        self.scaler.scale(total).backward()
        for optimizer in stepped:
            self.scaler.step(optimizer)
            self.pending.add(id(optimizer))

    def end_batch(self) -> None:
        """The scaler's one update of the batch, after every optimizer of it has stepped (a
        no-op without fp16, or when nothing stepped)."""
        if self.pending:
            self.scaler.update()
            self.pending.clear()


def train_epoch(
    method: Method,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    update: Updater,
    precision: Precision,
    epoch: int,
    on_batch: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """One pass over ``batches``: each step under the precision's autocast.

    Returns the epoch's mean of every logged loss term and every metric the method returned
    (one host transfer). Raises :class:`NonFiniteLossError` for a NaN or infinite loss term.
    """
    method.train()
    update.sums.clear()
    steps = 0
    for step, (x, y) in enumerate(batches):
        with precision.autocast():
            extra = method.training_step(x, y, update, epoch=epoch, step=step)
        update.end_batch()
        for key, value in extra.items():
            update.log(key, value)
        steps += 1
        on_batch()
    return _means(update.sums, steps, epoch)


def _means(sums: Mapping[str, torch.Tensor], steps: int, epoch: int) -> dict[str, Any]:
    keys = list(sums)
    values = torch.stack([sums[k] for k in keys]).cpu().tolist() if keys else []
    means = {}
    for key, value in zip(keys, values):
        mean = value / steps
        if not math.isfinite(mean) and key.startswith("loss/"):
            _, network, term = key.split("/", 2)
            raise NonFiniteLossError(
                f"loss term {term!r} of network {network!r} is {mean} in epoch {epoch}; "
                "the run stopped"
            )
        means[key] = mean
    return means
