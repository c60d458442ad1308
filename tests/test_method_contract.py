"""The method contract: what the loop hands a method, and what registering one means."""

import pytest

import kdlab
from kdlab.methods import METHODS
from kdlab.methods.base import Method, register
from kdlab.models import build_model


def test_register_refuses_a_taken_name():
    class Impostor(Method):
        name = "dml"

    with pytest.raises(ValueError, match="'dml' is taken by kdlab.methods.dml"):
        register(Impostor)
    assert METHODS["dml"].__module__ == "kdlab.methods.dml"


def test_training_step_gets_the_epoch_from_1_and_the_step_from_0():
    seen = []
    method = kdlab.methods.METHODS["independent"]({"net1": build_model("cnn_tiny", 10, 1)})
    inner = method.training_step

    def spying_step(x, y, update, *, epoch, step):
        seen.append((epoch, step))
        return inner(x, y, update, epoch=epoch, step=step)

    method.training_step = spying_step
    data = kdlab.load_dataset("digits", train_size=40)
    config = kdlab.TrainConfig(
        epochs=2, batch_size=16, schedule="constant", device="cpu", precision="fp32"
    )
    kdlab.fit(method, data, config, progress=False)
    steps = -(-40 // 16)
    assert seen == [(e, s) for e in (1, 2) for s in range(steps)]
