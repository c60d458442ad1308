"""Evaluation is a pure measurement (issue 23, point 4): the same numbers at any evaluation batch
size, every buffer of every network unchanged, no autograd graph, the networks' modes restored.

Networks left in train mode would normalise each test batch by its own statistics (numbers that
depend on the batch size) and move BatchNorm's running statistics (evaluation would train);
a pass with gradients on would build a graph for every test batch.
"""

from __future__ import annotations

import pytest
import torch

import kdlab
from kdlab.data import DeviceLoader
from kdlab.tasks.classification import evaluate


@pytest.fixture(scope="module")
def trained(digits):
    """A DML pair after one epoch (BatchNorm's running statistics no longer the initial ones)
    and a frozen, untrained teacher."""
    config = kdlab.TrainConfig(epochs=1, batch_size=50, lr=0.05, schedule="constant",
                               device="cpu", precision="fp32", seed=0)  # fmt: skip
    run = kdlab.run("dml", ["cnn_tiny", "cnn_tiny"], digits, config=config, progress=False)
    nets = dict(run.method.networks)
    kdlab.seed_everything(1)
    nets["teacher"] = kdlab.build_model("cnn_small", 10, 1).eval()
    return nets


def _buffers(nets):
    return {f"{n}/{k}": v.clone() for n, net in nets.items() for k, v in net.named_buffers()}


@pytest.mark.parametrize("batch_size", [7, 64, 360])
def test_the_same_numbers_at_any_evaluation_batch_size(trained, digits, batch_size):
    ensemble = ["peer1", "peer2"]
    whole = evaluate(trained, DeviceLoader.test(digits, 1024, "cpu"), ensemble)
    other = evaluate(trained, DeviceLoader.test(digits, batch_size, "cpu"), ensemble)
    assert set(whole) == set(other)
    assert {"acc/peer1", "acc/ensemble", "agree/peer1-peer2", "js/peer1-peer2"} <= set(whole)
    for key, value in whole.items():
        assert other[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_every_buffer_is_unchanged_and_the_modes_are_restored(trained, digits):
    trained["peer1"].train()
    trained["peer2"].eval()
    before = _buffers(trained)
    assert any("running_mean" in k for k in before)
    evaluate(trained, DeviceLoader.test(digits, 50, "cpu"), ["peer1", "peer2"])
    after = _buffers(trained)
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"{key} changed"
    assert trained["peer1"].training and not trained["peer2"].training
    assert not trained["teacher"].training


def test_no_graph_is_built(trained, digits):
    seen = []

    def hook(module, inputs, output):
        seen.append((torch.is_grad_enabled(), output.requires_grad, output.grad_fn))

    handles = [net.register_forward_hook(hook) for net in trained.values()]
    try:
        evaluate(trained, DeviceLoader.test(digits, 100, "cpu"), ["peer1", "peer2"])
    finally:
        for handle in handles:
            handle.remove()
    assert seen and all(entry == (False, False, None) for entry in seen)


def test_the_loop_reports_the_same_metrics_at_any_evaluation_batch_size(digits):
    records = []
    for eval_batch_size in (1000, 9):
        config = kdlab.TrainConfig(epochs=1, batch_size=50, lr=0.05, schedule="constant",
                                   device="cpu", precision="fp32", seed=0,
                                   eval_batch_size=eval_batch_size)  # fmt: skip
        run = kdlab.run("dml", ["cnn_tiny", "cnn_tiny"], digits, config=config, progress=False)
        records.append({k: v for k, v in run.history[0].items() if "/" in k and "loss" not in k})
    assert records[0].keys() == records[1].keys() and records[0]
    for key, value in records[0].items():
        assert records[1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
