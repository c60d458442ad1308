"""Training speed of kdlab's loop against the common PyTorch training loop, on the same device.

``python -m kdlab bench`` times, in one run, on one device, with the same models, batch size
and synthetic CIFAR-shaped data (50,000 random uint8 images, 32×32×3, 100 classes):

(a) **the reference**: the loop as it is commonly written. A torchvision-style ``Dataset`` that
    returns PIL images, ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
    ``ToTensor()``, ``Normalize(...)``; a ``DataLoader`` with one worker per CPU
    (``pin_memory`` on CUDA); float32; one ``torch.optim.SGD`` per network (Nesterov momentum
    0.9, weight decay 5e-4, PyTorch's default implementation); each method's loss written out
    plainly (below, ``_reference_*``).
(b) **kdlab**: :func:`kdlab.fit` with the method from :data:`kdlab.METHODS`, the
    device-resident loader (:class:`kdlab.DeviceLoader`) and the loop's defaults
    (``TrainConfig(precision="auto", channels_last="auto")``), unless told otherwise.

Rows: ``independent`` (one network, CE), ``kd`` (a frozen teacher's forward + the KD loss),
``dml`` (2 peers, mutual KL), ``tadml`` (2 peers, JS + discriminators + topology term). A row
whose method is not registered in :data:`kdlab.METHODS` is printed as skipped. Adding a row is
one :class:`Row` in :data:`ROWS` with its reference step.

Measurement: ``--warmup`` untimed steps, then ``--steps`` timed steps per path, split into
``--rounds`` blocks that alternate reference / kdlab, so that a change of load on a shared
machine hits both paths alike. The reference's worker processes live only during its own
blocks (a fresh iterator per block; its first batch and step are untimed, so worker start-up
is not counted), and kdlab's blocks are whole :func:`kdlab.fit` epochs of exactly the block's
steps, timed by the loop itself (``record["seconds"]``: the training pass, not the
evaluation). Throughput is training images per second (a batch of 64 images is 64 images
whether one network or two learn from it); seconds per epoch = 50,000 / (images per second).
"""

from __future__ import annotations

from .reference import EPOCH_IMAGES, ROWS, Row
from .report import add_arguments, environment, format_table, main
from .timing import Result, run_benchmark

__all__ = [
    "ROWS",
    "Row",
    "Result",
    "run_benchmark",
    "format_table",
    "environment",
    "add_arguments",
    "main",
    "EPOCH_IMAGES",
]
