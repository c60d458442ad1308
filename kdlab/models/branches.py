"""Multi-branch networks: one shared trunk, the last stage replicated into m branches.

The online-distillation family of METHODS.md §11 (ONE, CL-ILR, OKDDip, PCL) trains *branches*
rather than separate networks: the low layers are computed once and shared, each branch is
the last stage of a CIFAR network with its own classifier. The builders reuse the blocks of
:mod:`kdlab.models.cifar`: the network is built once, its stem and first stages become the
trunk, its last stage (and, for pre-activation WRNs, the final BN-ReLU) the first branch, and
the other branches are fresh copies of that stage, re-initialised.

Names (``build_model``):

``resnet<depth>_branches<m>``
    a CIFAR ResNet (depth ``6n + 2``: ``resnet32_branches3``, ``resnet110_branches4``): trunk
    = stem + stages 1–2 (16 and 32 channels), each branch = stage 3 (64 channels) + a linear
    classifier. The ONE and OKDDip codes split ResNets the same way (``layer3`` replicated).
``wrn_<depth>_<width>_branches<m>``
    a wide ResNet of :mod:`kdlab.models.cifar` (depth ``6n + 4``), split the same way. (PCL's
    "WRN-20-8" is the OKDDip code's bottleneck ``wide_resnet20_8``, not a Zagoruyko WRN:
    depth 20 is not ``6n + 4``, and the kit does not build it.)
``cnn_branches<m>``, ``cnn_small_branches<m>``, ``cnn_tiny_branches<m>``
    the small plain CNNs, third stage replicated: the digits set-ups of the notebooks and of
    the ``online_family_digits`` grid (seconds on a CPU).

The interface (what :mod:`kdlab.methods` and the loop rely on):

- ``net(x)``: the stacked branch logits, **B × m × C** (``net(x)[:, i]`` is branch i's).
- ``x`` may also be a list or tuple of m tensors (one augmented view per branch, PCL's and
  KDCL's per-peer augmentation): the trunk then runs once per view and branch i reads view i.
- ``net(x, return_features=True)`` → ``(logits, trunk, maps)``: ``trunk`` is the shared
  trunk's output map (B × C_t × H × W; with per-branch views a list of m of them) and ``maps``
  the list of the m branches' last feature maps (before global average pooling; pooled, they
  are what each classifier reads).
- ``net.branch(x, i)``: branch i's logits alone (trunk + that branch: what a deployed branch
  costs); :class:`BranchView` wraps it as a one-output classifier for evaluation.
- ``net.trunk_grad_scale`` (default 1.0): the gradient that reaches the trunk is multiplied by
  it — CL-ILR's *backpropagation rescaling* sets ``1/m``, so the trunk receives the mean of
  its branches' gradients instead of their sum (Song & Chai 2018, §3.2).
- ``num_branches``, ``num_classes``, ``trunk_channels``, ``feature_dim`` (a branch's pooled
  feature size), ``stage_channels``, ``arch``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from . import register_pattern
from .cifar import _cifar_resnet, _init_weights, _simple_cnn_builder, _StagedNet, _wide_resnet

__all__ = [
    "BranchedNet", "BranchView", "branch_names", "global_pool", "is_branched",
    "the_branched_network",
]  # fmt: skip


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class _Branch(nn.Module):
    """The replicated last stage: ``stage → head_act → global average pool → linear``."""

    def __init__(self, stage: nn.Module, head_act: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.stage = stage
        self.head_act = head_act
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = self.head_act(self.stage(x))
        return self.classifier(torch.flatten(self.pool(feature_map), 1)), feature_map


class BranchedNet(nn.Module):
    """A shared trunk and ``m`` branches (see the module docstring for the interface)."""

    def __init__(self, base: _StagedNet, num_branches: int) -> None:
        super().__init__()
        if num_branches < 2:
            raise ValueError(
                f"a multi-branch network needs at least 2 branches, got {num_branches}"
            )
        self.trunk = nn.Sequential(base.stem, *base.stages[:-1])
        first = _Branch(base.stages[-1], base.head_act, base.classifier)
        branches = [first]
        for _ in range(num_branches - 1):
            twin = copy.deepcopy(first)
            _init_weights(twin)  # a fresh draw, not a copy of the first branch's weights
            twin.classifier.reset_parameters()
            branches.append(twin)
        self.branches = nn.ModuleList(branches)
        self.num_branches = num_branches
        self.num_classes = base.num_classes
        self.stage_channels = list(base.stage_channels)
        self.trunk_channels = base.stage_channels[-2]
        self.feature_dim = base.feature_dim
        self.arch = base.arch
        self.trunk_grad_scale = 1.0

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.trunk(x)
        if self.trunk_grad_scale != 1.0 and shared.requires_grad:
            shared = _ScaleGradient.apply(shared, self.trunk_grad_scale)
        return shared

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor], return_features: bool = False):
        if isinstance(x, (list, tuple)):
            if len(x) != self.num_branches:
                raise ValueError(
                    f"{self.arch}: got {len(x)} views for {self.num_branches} branches"
                )
            trunk: torch.Tensor | list[torch.Tensor] = [self._trunk(v) for v in x]
            inputs = trunk
        else:
            trunk = self._trunk(x)
            inputs = [trunk] * self.num_branches
        outputs = [branch(t) for branch, t in zip(self.branches, inputs, strict=True)]
        logits = torch.stack([z for z, _ in outputs], dim=1)
        if return_features:
            return logits, trunk, [m for _, m in outputs]
        return logits

    def branch(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Branch ``index``'s logits (B × C): the trunk and that branch only."""
        return self.branches[index](self._trunk(x))[0]

    def branch_parameters(self, index: int) -> list[nn.Parameter]:
        """The parameters branch ``index`` computes with: the trunk's and its own."""
        return [*self.trunk.parameters(), *self.branches[index].parameters()]


class BranchView(nn.Module):
    """Branch ``index`` of a :class:`BranchedNet` as a one-output classifier, for evaluation.

    It holds the network by reference (no parameters of its own): a method's ``evaluated()``
    builds views when asked, so the loop's classification evaluation reports every branch
    like any network.
    """

    kind = "classifier"

    def __init__(self, net: BranchedNet, index: int) -> None:
        super().__init__()
        self.net = net
        self.index = index
        self.arch = f"{net.arch}[branch {index + 1}]"
        self.train(net.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.branch(x, self.index)

    def member_parameters(self) -> list[nn.Parameter]:
        """What the deployed branch keeps: the trunk and this branch."""
        return self.net.branch_parameters(self.index)


def global_pool(feature_map: torch.Tensor) -> torch.Tensor:
    """``mean_{x,y} f``: B × C × H × W → B × C, what a branch's classifier reads (not
    normalised, unlike :func:`kdlab.losses.pooled_embedding`)."""
    return feature_map.flatten(2).mean(2)


def is_branched(net: nn.Module) -> bool:
    """Whether ``net`` is a multi-branch network (B × m × C logits)."""
    return isinstance(net, BranchedNet)


def the_branched_network(method: str, networks, least: int = 2) -> tuple[str, BranchedNet]:
    """``(name, net)`` of the one multi-branch network a method trains; a one-line ValueError
    when it is given anything else or fewer than ``least`` branches."""
    nets = dict(networks)
    if len(nets) != 1 or not is_branched(next(iter(nets.values()))):
        given = ", ".join(getattr(n, "arch", type(n).__name__) for n in nets.values())
        raise ValueError(
            f"method {method!r} trains one multi-branch network (e.g. resnet32_branches3), "
            f"got {len(nets)}: {given}"
        )
    name, net = next(iter(nets.items()))
    if net.num_branches < least:
        raise ValueError(
            f"method {method!r} needs at least {least} branches, {net.arch} has {net.num_branches}"
        )
    return name, net


def branch_names(count: int, prefix: str = "branch") -> list[str]:
    """``branch1``, ``branch2``…: how the methods name branches in records and figures."""
    return [f"{prefix}{i}" for i in range(1, count + 1)]


def _branches_rule(match) -> str | None:
    if int(match.group("m")) < 2:
        return "a multi-branch network needs at least 2 branches"
    return None


def _resnet_rule(match) -> str | None:
    depth = int(match.group("depth"))
    if depth < 8 or (depth - 2) % 6:
        return f"CIFAR ResNet depth {depth}: it must be 6n + 2, e.g. 20, 32, 56, 110"
    return _branches_rule(match)


def _wrn_rule(match) -> str | None:
    depth = int(match.group("depth"))
    if depth < 10 or (depth - 4) % 6:
        return f"Wide ResNet depth {depth}: it must be 6n + 4, e.g. 10, 16, 22, 28, 40"
    return _branches_rule(match)


@register_pattern(
    "resnet<depth>_branches<m>",
    r"resnet(?P<depth>[1-9][0-9]*)_branches(?P<m>[0-9]+)",
    check=_resnet_rule,
)
def _resnet_branches(match, num_classes: int, in_channels: int, arch: str) -> BranchedNet:
    """A CIFAR ResNet whose third stage is replicated into m branches over a shared trunk."""
    base = _cifar_resnet(int(match.group("depth")), num_classes, in_channels, arch)
    return BranchedNet(base, int(match.group("m")))


@register_pattern(
    "wrn_<depth>_<width>_branches<m>",
    r"wrn_(?P<depth>[1-9][0-9]*)_(?P<width>[1-9][0-9]*)_branches(?P<m>[0-9]+)",
    check=_wrn_rule,
)
def _wrn_branches(match, num_classes: int, in_channels: int, arch: str) -> BranchedNet:
    """A wide ResNet whose third stage (with the final BN-ReLU) is replicated into m branches."""
    depth, width = int(match.group("depth")), int(match.group("width"))
    base = _wide_resnet(depth, width, num_classes, in_channels, arch)
    return BranchedNet(base, int(match.group("m")))


_CNN_WIDTHS = {"cnn": 32, "cnn_small": 16, "cnn_tiny": 8}


@register_pattern(
    "cnn[_small|_tiny]_branches<m>",
    r"(?P<base>cnn|cnn_small|cnn_tiny)_branches(?P<m>[0-9]+)",
    check=_branches_rule,
)
def _cnn_branches(match, num_classes: int, in_channels: int, arch: str) -> BranchedNet:
    """A small plain CNN whose third stage is replicated into m branches."""
    base = _simple_cnn_builder(_CNN_WIDTHS[match.group("base")])(num_classes, in_channels, arch)
    return BranchedNet(base, int(match.group("m")))
