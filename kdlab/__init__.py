"""kdlab: a notebook-first teaching kit for knowledge distillation and online mutual learning.

The pieces, one place each: :mod:`kdlab.models` (networks), :mod:`kdlab.data` (datasets and the
device-resident loader), :mod:`kdlab.tasks` (what a batch is and how networks are evaluated:
classification, retrieval, detection), :mod:`kdlab.losses` (the formulas), :mod:`kdlab.methods`
(one file per method), :mod:`kdlab.train` (the one training loop), :mod:`kdlab.metrics`,
:mod:`kdlab.live` (live plots and widgets), :mod:`kdlab.profiles` and :mod:`kdlab.cli` (the
command line).
"""

from . import losses
from .data import DeviceLoader, ImageDataset, load_dataset
from .methods import METHODS, Method, get_method
from .models import available_models, build_model
from .profiles import PROFILES, profile
from .train import (
    History,
    Run,
    TrainConfig,
    fit,
    load_network,
    pick_device,
    run,
    save_network,
    seed_everything,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "PROFILES",
    "DeviceLoader",
    "History",
    "ImageDataset",
    "Method",
    "Run",
    "TrainConfig",
    "available_models",
    "build_model",
    "fit",
    "get_method",
    "load_dataset",
    "load_network",
    "losses",
    "pick_device",
    "profile",
    "run",
    "save_network",
    "seed_everything",
]
