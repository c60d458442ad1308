"""Shared fixtures: a small digits set-up that trains in about a second on a CPU."""

from __future__ import annotations

import os

import pytest
import torch

import kdlab

os.environ.setdefault("KDLAB_PROFILE", "smoke")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def digits():
    """The embedded digits dataset with a fixed 200-image training subset."""
    return kdlab.load_dataset("digits", train_size=200)


@pytest.fixture
def fast_config():
    """Two epochs of the smoke recipe on the CPU."""
    return kdlab.TrainConfig(
        epochs=2, batch_size=50, lr=0.05, schedule="cosine", device="cpu", seed=0
    )
