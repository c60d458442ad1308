"""Shared fixtures: a small digits set-up that trains in about a second on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import kdlab

os.environ.setdefault("KDLAB_PROFILE", "smoke")
# One intra-op thread: the tests' networks are tiny, and on a shared machine a second OpenMP
# thread spins waiting for a busy core (measured: 6× the CPU time and 5× the wall time of one).
torch.set_num_threads(1)


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


@pytest.fixture
def kernel_environment(monkeypatch):
    """The environment a notebook kernel started by a test inherits (it is a child process):
    this checkout first on the path, one intra-op thread, the smoke profile, no display."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("KDLAB_PROFILE", "smoke")
    monkeypatch.setenv("MPLBACKEND", "Agg")
