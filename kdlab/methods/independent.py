"""Independent training, the baseline every comparison is made against (METHODS.md §1)."""

from __future__ import annotations

from .base import Method, register


@register
class Independent(Method):
    """Every network learns from the labels alone: ``L_k = CE(y, z_k)``.

    Any number of networks; they share batches (one forward each per batch) but nothing else,
    so training several at once is the same as training each by itself with the same seed.
    """

    name = "independent"

    def training_step(self, x, y, update, *, epoch=1, step=0):
        update({name: {"ce": self.ce(net(x), y)} for name, net in self.networks.items()})
        return {}
