"""(a) The benchmark's reference: the training loop as it is commonly written, and the rows.

A torchvision-style ``Dataset`` of PIL images with the usual CIFAR transform, a ``DataLoader``
with worker processes, float32, PyTorch's default SGD, each method's loss written out plainly.
A :class:`Row` pairs a kdlab method with its reference step; :data:`ROWS` are the rows timed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPOCH_IMAGES = 50_000  # CIFAR-100's training split
NUM_CLASSES = 100
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# The recipe's optimiser, shared by both paths (METHODS.md §3, DML's CIFAR-100 recipe).
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


class SyntheticCIFAR(torch.utils.data.Dataset):
    """A torchvision-``CIFAR100``-style dataset over uint8 HWC arrays: PIL image → transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.data, self.targets, self.transform = images, labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def reference_transform(padding: int = 4, size: int = 32):
    """The usual CIFAR training transform (torchvision)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomCrop(size, padding=padding),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )


def _sgd(net: nn.Module) -> torch.optim.Optimizer:
    # PyTorch's default implementation (no foreach/fused argument), as commonly written.
    return torch.optim.SGD(
        net.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
    )


def _backward_and_step(loss: torch.Tensor, *optimizers: torch.optim.Optimizer) -> None:
    """The plain PyTorch update: zero the gradients, backward, step each optimizer."""
    for opt in optimizers:
        opt.zero_grad()
    loss.backward()
    for opt in optimizers:
        opt.step()


def _kl(z: torch.Tensor, z_target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(sg p_target^T ‖ p^T), batchmean."""
    return F.kl_div(
        F.log_softmax(z / temperature, dim=1),
        F.softmax(z_target.detach() / temperature, dim=1),
        reduction="batchmean",
    )


def _reference_independent(nets, teacher):
    (net,) = nets
    opt = _sgd(net)

    def step(x, y):
        loss = F.cross_entropy(net(x), y)
        _backward_and_step(loss, opt)

    return step


def _reference_kd(nets, teacher, alpha: float = 0.9, temperature: float = 4.0):
    (student,) = nets
    teacher.eval()
    opt = _sgd(student)

    def step(x, y):
        with torch.no_grad():
            t = teacher(x)
        z = student(x)
        loss = (1 - alpha) * F.cross_entropy(z, y) + alpha * temperature**2 * _kl(z, t, temperature)
        _backward_and_step(loss, opt)

    return step


def _reference_dml(nets, teacher):
    net1, net2 = nets
    opt1, opt2 = _sgd(net1), _sgd(net2)

    def step(x, y):
        z1, z2 = net1(x), net2(x)
        loss1 = F.cross_entropy(z1, y) + _kl(z1, z2)
        loss2 = F.cross_entropy(z2, y) + _kl(z2, z1)
        _backward_and_step(loss1 + loss2, opt1, opt2)

    return step


def _js(z: torch.Tensor, z_peer: torch.Tensor) -> torch.Tensor:
    """JS(p, sg p_peer), batchmean."""
    p, q = F.softmax(z, dim=1), F.softmax(z_peer.detach(), dim=1)
    m = (0.5 * (p + q)).clamp_min(1e-12).log()
    return 0.5 * (F.kl_div(m, p, reduction="batchmean") + F.kl_div(m, q, reduction="batchmean"))


def _topology(h: torch.Tensor, h_peer: torch.Tensor, k: int = 16, tau: float = 0.1):
    """mean_i KL(sg q_peer(·|i) ‖ q(·|i)) over each anchor's K nearest neighbours (peer's space)."""
    h = F.normalize(h, dim=1)
    hp = F.normalize(h_peer.detach(), dim=1)
    sim = hp @ hp.T
    sim.fill_diagonal_(-float("inf"))
    index = sim.topk(k, dim=1).indices
    logits = torch.einsum("bd,bkd->bk", h, h[index]) / tau
    target = torch.einsum("bd,bkd->bk", hp, hp[index]) / tau
    return F.kl_div(F.log_softmax(logits, 1), F.softmax(target, 1), reduction="batchmean")


def _reference_tadml(nets, teacher, lam_adv: float = 0.1, lam_topo: float = 1.0):
    net1, net2 = nets
    opt1, opt2 = _sgd(net1), _sgd(net2)
    device = next(net1.parameters()).device

    def mlp():
        return nn.Sequential(
            nn.Linear(NUM_CLASSES, 128), nn.LeakyReLU(0.2),
            nn.Linear(128, 256), nn.LeakyReLU(0.2),
            nn.Linear(256, 128), nn.LeakyReLU(0.2),
            nn.Linear(128, 1),
        ).to(device)  # fmt: skip

    d1, d2 = mlp(), mlp()
    opt_d1 = torch.optim.Adam(d1.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d2 = torch.optim.Adam(d2.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()

    def step(x, y):
        z1, f1 = net1(x, return_features=True)
        z2, f2 = net2(x, return_features=True)
        h1, h2 = f1[-1].mean(dim=(2, 3)), f2[-1].mean(dim=(2, 3))
        ones = torch.ones(x.shape[0], 1, device=x.device)
        zeros = torch.zeros(x.shape[0], 1, device=x.device)
        # Discriminators: the peer's output is real, the own network's is fake.
        loss_d = (
            bce(d1(z2.detach()), ones)
            + bce(d1(z1.detach()), zeros)
            + bce(d2(z1.detach()), ones)
            + bce(d2(z2.detach()), zeros)
        )
        _backward_and_step(loss_d, opt_d1, opt_d2)
        # Peers: CE + JS + fool the own discriminator + agree on the peer's local topology.
        d1.requires_grad_(False)
        d2.requires_grad_(False)
        loss1 = (
            F.cross_entropy(z1, y)
            + _js(z1, z2)
            + lam_adv * bce(d1(z1), ones)
            + lam_topo * _topology(h1, h2)
        )
        loss2 = (
            F.cross_entropy(z2, y)
            + _js(z2, z1)
            + lam_adv * bce(d2(z2), ones)
            + lam_topo * _topology(h2, h1)
        )
        d1.requires_grad_(True)
        d2.requires_grad_(True)
        _backward_and_step(loss1 + loss2, opt1, opt2)

    return step


# ---------------------------------------------------------------------------------------------
# The rows
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmark row: a kdlab method (by its name in :data:`kdlab.METHODS`), how many
    networks it trains, whether it has a frozen teacher, and the reference's step builder
    ``reference(networks, teacher) -> step(x, y)``."""

    name: str
    method: str
    networks: int
    reference: Callable[[list[nn.Module], nn.Module | None], Callable]
    teacher: bool = False


ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row("independent", "independent", 1, _reference_independent),
        Row("kd", "kd", 1, _reference_kd, teacher=True),
        Row("dml", "dml", 2, _reference_dml),
        Row("tadml", "tadml", 2, _reference_tadml),
    )
}
