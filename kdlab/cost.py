"""What a method's networks cost: parameters and multiply-accumulates (MACs) per image.

The online family trades separate peers for branches over a shared trunk (METHODS.md §11), so
a comparison of accuracies needs the compute beside it. :func:`method_cost` measures, for one
trained method:

- ``params``: the parameters the method trains (its networks and auxiliary modules, heads such
  as ONE's gate included; each shared tensor counted once; a temporal mean's copy excluded);
- ``macs``: the MACs per image of the forward passes one training step makes
  (:meth:`kdlab.methods.Method.cost_forward`: every branch, head and temporal mean; no
  backward pass), in units of one multiply-accumulate;
- ``networks``: for every network the loop evaluates (a branch, a gated ensemble…) the
  parameters it computes with and the MACs of its forward pass per image: what it costs at
  test time, deployed alone.

MACs are FLOPs / 2 as counted by :class:`torch.utils.flop_counter.FlopCounterMode` on
convolutions and matrix products; BatchNorm, activations, pooling and softmax are not counted
(the convention of the papers' parameter/FLOP tables).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "count_parameters", "method_cost"]


def count_parameters(parameters: Iterable[nn.Parameter]) -> int:
    """The number of scalars in ``parameters``, each tensor counted once."""
    unique = {id(p): p for p in parameters}
    return sum(p.numel() for p in unique.values())


def count_macs(forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
    """Multiply-accumulates per image of ``forward(x)`` (FLOPs / 2 / batch size), without
    gradient."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward(x)
    return counter.get_total_flops() / 2 / x.shape[0]


def method_cost(method: nn.Module, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """``{"params", "macs", "networks": {name: {"params", "macs"}}}`` of a method, measured on
    a batch of two blank images of ``image_shape`` (C × H × W) in eval mode; the method's
    training mode is restored afterwards and nothing it holds is changed."""
    device = next(method.parameters()).device
    x = torch.zeros(2, *image_shape, device=device)
    trained = [*method.networks.parameters(), *method.auxiliary.parameters()]
    was_training = method.training
    method.eval()
    try:
        networks = {}
        for name, net in method.evaluated().items():
            net.eval()
            members = getattr(net, "member_parameters", net.parameters)()
            networks[name] = {"params": count_parameters(members), "macs": count_macs(net, x)}
        cost = {"params": count_parameters(trained), "macs": count_macs(method.cost_forward, x)}
    finally:
        method.train(was_training)
    return {**cost, "networks": networks}
