"""The step schedule's milestones are epochs of the run, as given (issue 23, point 1).

A recipe copied from a paper keeps its schedule: mdistiller's CIFAR recipe, 240 epochs with the
rate ÷10 after epochs 150, 180 and 210, drops there (not at 180, 216 and 252, as when the
milestones were read as epochs of 200 and rescaled). A milestone at or past the last epoch is
an error naming it. What shrinks a recipe (a profile, a widget's shorter run, a grid's
``epochs``, ``--teacher-epochs``) scales its milestones itself, so every shipped profile, grid
and notebook keeps the schedule it had: that is checked here against the rule they had.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import kdlab
from kdlab import profiles
from kdlab.optim import make_scheduler, scale_milestones
from kdlab.reproduce.contract import settings_profile
from kdlab.reproduce.grid import load_grid

ROOT = Path(__file__).resolve().parents[1]
GRIDS = sorted((ROOT / "kdlab" / "grids").glob("*.yaml"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def rates(config: kdlab.TrainConfig, milestones: list[int] | None = None) -> list[float]:
    """The learning rate of every epoch of ``config`` (``milestones``: MultiStepLR's instead)."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=config.lr)
    if milestones is None:
        scheduler = make_scheduler(optimizer, config)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, config.gamma)
    seen = []
    for _ in range(config.epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


# The milestones each shipped grid gave before they became epochs of the run (read then as
# epochs of 200 and scaled). A grid not named here gave none: DML's (60, 120, 180) applied.
GIVEN_BEFORE = {"online_family_cifar100": (100, 150)}  # now [150, 225] for its 300 epochs


def rates_before(config: kdlab.TrainConfig, given=(60, 120, 180)) -> list[float]:
    """The schedule the same settings had before: the milestones given (DML's, where none
    were), read as epochs of 200 and scaled to the run."""
    if config.schedule != "step":
        return rates(config)
    scaled = sorted({max(1, round(m * config.epochs / 200)) for m in given})
    return rates(config, scaled)


# --------------------------------------------------------------------------- as given


def test_a_published_recipe_keeps_its_milestones():
    # mdistiller's CIFAR-100 recipe: 240 epochs, lr 0.05 ÷10 after epochs 150, 180 and 210.
    config = kdlab.TrainConfig(epochs=240, lr=0.05, milestones=(150, 180, 210))
    lr = dict(enumerate(rates(config), start=1))
    assert lr[150] == pytest.approx(0.05)
    assert lr[151] == pytest.approx(0.005)
    assert lr[180] == pytest.approx(0.005) and lr[181] == pytest.approx(5e-4)
    assert lr[210] == pytest.approx(5e-4) and lr[211] == pytest.approx(5e-5)
    assert lr[240] == pytest.approx(5e-5)
    assert json.loads(json.dumps(dataclasses.asdict(config)))["milestones"] == [150, 180, 210]


def test_a_short_run_drops_where_it_is_told():
    config = kdlab.TrainConfig(epochs=5, lr=0.1, milestones=(2, 4))
    assert rates(config) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


@pytest.mark.parametrize(
    ("epochs", "milestones", "named"),
    [(240, (150, 180, 240), "240"), (100, (60, 120, 180), "120"), (10, (10,), "10"),
     (2, (60, 120, 180), "60")],
)  # fmt: skip
def test_a_milestone_at_or_past_the_last_epoch_is_an_error_naming_it(epochs, milestones, named):
    with pytest.raises(ValueError, match=rf"milestone {named} is at or past the last epoch"):
        kdlab.TrainConfig(epochs=epochs, milestones=milestones)
    # Another schedule does not read them.
    kdlab.TrainConfig(epochs=epochs, milestones=milestones, schedule="cosine")


@pytest.mark.parametrize(
    ("milestones", "word"), [((0, 5), "before the first"), ((5, 3), "increase"),
                             ((3, 3), "increase"), ((2.5,), "whole epoch")],
)  # fmt: skip
def test_milestones_must_be_increasing_epochs_of_the_run(milestones, word):
    with pytest.raises(ValueError, match=word):
        kdlab.TrainConfig(epochs=10, milestones=milestones)


def test_scale_milestones():
    assert scale_milestones((60, 120, 180), 200, 30) == (9, 18, 27)
    assert scale_milestones((60, 120, 180), 200, 2) == (1,)  # 1, 1, 2: merged, the last dropped
    assert scale_milestones((60, 120, 180), 200, 1) == ()
    assert scale_milestones((150, 180, 210), 240, 240) == (150, 180, 210)
    assert scale_milestones((150, 180, 210), 240, 24) == (15, 18, 21)


def test_a_profile_scales_its_own_milestones_and_keeps_given_ones():
    paper = kdlab.profile("paper")
    assert paper.train_config().milestones == (60, 120, 180)
    assert paper.train_config(epochs=30).milestones == (9, 18, 27)  # a shorter run of the recipe
    given = kdlab.profile("paper", epochs=240, milestones=[150, 180, 210])
    assert given.train_config().milestones == (150, 180, 210)  # as typed
    assert given.train_config(epochs=24).milestones == (15, 18, 21)  # a widget's shorter run
    with pytest.raises(ValueError, match="milestone 150 is at or past"):
        kdlab.profile("smoke", schedule="step", milestones=[150]).train_config()


def test_a_teacher_trained_for_fewer_epochs_gets_the_recipe_scaled(digits, monkeypatch):
    import kdlab.train
    from kdlab.reproduce import contract

    seen = {}

    def run(method, models, data, *, config, **kwargs):  # records the recipe of each training
        seen[method] = config
        return SimpleNamespace(method=SimpleNamespace(networks={"net1": torch.nn.Linear(1, 1)}))

    monkeypatch.setattr(kdlab.train, "run", run)
    config = kdlab.TrainConfig(epochs=20, milestones=(6, 12, 18), device="cpu")
    contract.train_one("kd", ["cnn_tiny"], digits, config=config, teacher="cnn_tiny",
                       teacher_epochs=10, progress=False)  # fmt: skip
    assert seen["independent"].epochs == 10 and seen["independent"].milestones == (3, 6, 9)
    assert seen["kd"].epochs == 20 and seen["kd"].milestones == (6, 12, 18)


# --------------------------------------------------------------------------- what ships


def _epochs_to_check(epochs: int) -> list[int]:
    """The profile's own epochs and the shorter runs widgets and grids ask for."""
    return sorted({*range(1, min(epochs, 30) + 1), max(epochs, 5), epochs})


def _applying_profiles(name: str) -> list[profiles.Profile]:
    """The profile and, where it has one, the fallback it takes without a GPU."""
    base = kdlab.profile(name)
    found = [base]
    if base.fallback_dataset:
        kept = {k: v for k, v in base.fallback.items() if k not in base.overridden}
        found.append(dataclasses.replace(base, **kept, dataset=base.fallback_dataset))
    return found


@pytest.mark.parametrize("name", list(profiles.PROFILES))
@pytest.mark.parametrize("schedule", [None, "step"])
def test_every_profile_keeps_the_schedule_it_had(name, schedule):
    for prof in _applying_profiles(name):
        if schedule:
            prof = dataclasses.replace(prof, schedule=schedule)
        for epochs in _epochs_to_check(prof.epochs):
            config = prof.train_config(seed=0, epochs=epochs)
            assert rates(config) == rates_before(config), (prof.name, prof.dataset, epochs)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.stem)
def test_every_shipped_grid_keeps_the_schedule_it_had(grid):
    cells = load_grid(grid).cells
    assert cells
    for cell in cells:
        config = settings_profile(cell).train_config(seed=cell.seed)  # valid: no error
        if "milestones" in cell.settings and grid.stem not in GIVEN_BEFORE:
            continue  # a grid written since: its milestones are epochs of its run
        given = GIVEN_BEFORE.get(grid.stem, (60, 120, 180))
        assert rates(config) == rates_before(config, given), cell.name
        if "milestones" not in cell.settings:  # DML's, under a step schedule too
            step = dataclasses.replace(settings_profile(cell), schedule="step")
            config = step.train_config(seed=cell.seed)
            assert rates(config) == rates_before(config), cell.name


def _cell_source(nb: dict, tag: str | None = None, contains: str | None = None) -> str:
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] != "code":
            continue
        if tag and tag in cell["metadata"].get("tags", []):
            return source
        if contains and contains in source:
            return source
    raise AssertionError(f"no cell {tag or contains!r}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_keeps_the_schedule_it_had(path, monkeypatch, digits):
    """Run the notebook's parameters cell and the cell that builds its profile, as on a GPU
    machine and as on a CPU (every profile; the data stubbed), and check every recipe the
    notebook trains with: ``cfg.train_config(seed=…)`` and its widgets' ``epochs=…``."""
    nb = json.loads(path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    calls = re.findall(r"train_config\(([^)]*)\)", code)
    if not calls:
        pytest.skip("this notebook trains nothing")
    for args in calls:  # only the seed and a widget's epochs: nothing else moves the recipe
        keys = set(re.findall(r"(\w+)=", args))
        assert keys <= {"seed", "epochs"}, (path.name, args)
    parameters = _cell_source(nb, tag="parameters")
    building = _cell_source(nb, contains="kdlab.profile(")
    monkeypatch.setattr(profiles, "load_dataset", lambda *args, **kwargs: digits)
    for gpu in (True, False):
        device = torch.device("cuda" if gpu else "cpu")
        monkeypatch.setattr(profiles, "pick_device", lambda device=device: device)
        for name in profiles.PROFILES:
            namespace: dict = {}
            exec(parameters, namespace)
            namespace["PROFILE"] = name
            exec(building, namespace)
            cfg = namespace["cfg"]
            for schedule in (cfg.schedule, "step"):
                prof = dataclasses.replace(cfg, schedule=schedule)
                for epochs in _epochs_to_check(prof.epochs):
                    config = prof.train_config(seed=0, epochs=epochs)
                    assert rates(config) == rates_before(config), (path.name, name, epochs)
