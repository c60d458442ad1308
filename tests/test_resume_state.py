"""A resumed run equals the uninterrupted one in *every* piece of saved state (issue 23, point 4).

Two runs that exercise what a metrics-only comparison misses:

- TADML with random neighbour sampling draws random numbers from the global generator during
  training: a resumed run that does not restore the RNG state draws other neighbours;
- ADML in fp16 with a gradient scaler that starts too high, so it backs off (skipped steps,
  a lowered scale) and grows again (a short growth interval): a resumed run that does not
  restore the scaler starts from its initial scale again.

Each is interrupted after epoch 1 and resumed in a process whose generator was moved on; then
every entry of ``checkpoint.pt`` (networks, discriminators, optimizers, schedules, scaler,
loader, RNG state, history) and every file of the run folder must equal the uninterrupted run's.
"""

from __future__ import annotations

import json

import pytest
import torch

import kdlab
from kdlab.precision import Precision

INITIAL_SCALE = 2.0**24  # fp16 gradients of these losses overflow at this scale


def _config(precision: str) -> kdlab.TrainConfig:
    return kdlab.TrainConfig(epochs=3, batch_size=50, lr=0.05, schedule="step", milestones=(2,),
                             device="cpu", precision=precision, seed=3)  # fmt: skip


def assert_same(a, b, where: str = "") -> None:
    """``a == b`` entry by entry: tensors bit for bit, the history without its timings."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _checkpoint(folder) -> dict:
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    state["history"] = _untimed(json.loads(state["history"]))
    return state


def _files(folder) -> dict:
    """Every file of the run folder, read: JSON parsed (timings dropped), .pt files loaded."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_dir():
            continue
        if name == "checkpoint.pt":
            found[name] = _checkpoint(folder)
        elif path.suffix == ".pt":
            found[name] = torch.load(path, weights_only=True)
        elif path.suffix == ".jsonl":
            found[name] = _untimed([json.loads(line) for line in path.read_text().splitlines()])
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
            data.pop("seconds", None)
            found[name] = data
        else:
            found[name] = path.read_bytes()
    return found


def _interrupted_and_resumed(tmp_path, digits, method, precision, **params):
    models = ["cnn_tiny", "cnn_tiny"]
    kwargs = dict(config=_config(precision), progress=False, **params)
    whole = kdlab.run(method, models, digits, out=tmp_path / "whole", **kwargs)
    part = tmp_path / "part"
    kdlab.run(method, models, digits, out=part, stop_after=1, **kwargs)
    torch.manual_seed(987)  # the interrupted process is gone: another generator state
    torch.rand(1000)
    resumed = kdlab.run(method, models, digits, out=part, resume=True, **kwargs)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    return whole, tmp_path / "whole", part


def test_tadml_with_random_neighbours_resumes_to_the_same_state(tmp_path, digits):
    _, whole, part = _interrupted_and_resumed(
        tmp_path, digits, "tadml", "fp32", topo_sampling="random", topo_k=8
    )
    saved = _checkpoint(whole)
    assert set(saved) >= {"method", "optimizers", "schedulers", "scaler", "loader", "rng_cpu"}
    assert_same(_files(part), _files(whole))


@pytest.mark.filterwarnings("ignore:Detected call of")  # the first steps are skipped: overflow
def test_fp16_with_the_scaler_backing_off_resumes_to_the_same_state(tmp_path, digits, monkeypatch):
    def scaler_from_too_high(self):
        self.scaler = torch.amp.GradScaler(
            self.device.type, init_scale=INITIAL_SCALE, growth_interval=3, enabled=self.scaled
        )

    monkeypatch.setattr(Precision, "__post_init__", scaler_from_too_high)
    _, whole, part = _interrupted_and_resumed(tmp_path, digits, "adml", "fp16")
    scaler = _checkpoint(whole)["scaler"]
    assert scaler["scale"] < INITIAL_SCALE / 4  # it backed off several times
    history = _checkpoint(whole)["history"]
    assert all(torch.isfinite(torch.tensor(v)) for row in history for v in row.values())
    assert_same(_files(part), _files(whole))
