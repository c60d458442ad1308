"""The niyaz_polyp grid: dry-run without the data or the weights, and its smoke version run to
a results table on the synthetic polyps; live plots of mAP."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import kdlab
from kdlab import cli
from kdlab.live import LivePlot
from kdlab.reproduce import load_grid, run_grid
from kdlab.train import History


def test_niyaz_polyp_dry_runs_without_data_or_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDLAB_DATA", str(tmp_path / "empty"))

    def no_network(*args, **kwargs):
        raise AssertionError("the dry run fetched weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert cli.main(["reproduce", "niyaz_polyp", "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "9 cells" in printed and printed.count("kvasir_seg") == 9
    grid = load_grid("niyaz_polyp")
    settings = {(c.params.get("beta", 1.0), c.params.get("use_teacher", True)) for c in grid.cells}
    assert settings == {(1.0, True), (0.0, True), (1.0, False)}  # KD + ML, KD only, ML only
    assert {c.seed for c in grid.cells} == {0, 1, 2} and {c.profile for c in grid.cells} == {
        "paper"
    }
    assert not (tmp_path / "empty").exists()


def test_the_smoke_grid_runs_to_a_table(tmp_path):
    out = tmp_path / "grid"
    outcomes = run_grid("niyaz_polyp_smoke", out, how="direct", progress=False)
    assert [o["status"] for o in outcomes] == ["ok"] * 3
    results = pd.read_csv(out / "results.csv")
    assert set(results["metric"]) == {"map"}
    networks = results.groupby("label")["network"].apply(set).to_dict()
    with_teacher = {"teacher", "student1", "student2", "ensemble"}
    assert sorted(map(len, networks.values())) == [3, 4, 4]
    assert sum(v == with_teacher for v in networks.values()) == 2
    assert results["final_mean"].between(0, 100).all()
    table = (out / "results.md").read_text()
    assert "COCO mAP@[.5:.95]" in table and "top-1 accuracy" not in table
    assert "student1 (fasterrcnn_tiny_cnn)" in table


def test_live_plot_draws_the_headline_metric_of_detection():
    history = History(
        [
            {"epoch": e, "map/teacher": 10.0 * e, "map50/teacher": 30.0 * e,
             "map/student1": 5.0 * e, "map50/student1": 20.0 * e}
            for e in (1, 2)
        ]
    )  # fmt: skip
    history.metric = "map"
    plot = LivePlot(metrics=("acc", "map50"), max_share=1)
    plot.update = lambda: None  # no display here: the figure is checked
    plot.track("run")(history[-1], history)
    axes = plot.figure().axes
    assert [ax.get_title() for ax in axes] == ["test mAP (%)", "test mAP@0.5 (%)"]
    curves = {line.get_label(): list(line.get_ydata()) for line in axes[0].lines}
    assert curves == {"run/teacher": [10.0, 20.0], "run/student1": [5.0, 10.0]}
    assert len(axes[1].lines) == 2
    only = LivePlot(metrics=("acc", "map50"), networks=("teacher",))
    only.update = lambda: None
    only.track("run")(history[-1], history)
    assert [len(ax.lines) for ax in only.figure().axes] == [1, 1]  # students left out of both


def test_detection_bench_reports_an_epoch_and_the_peak_memory():
    """The command's numbers are there and consistent (their values are not tested: a timing)."""
    from kdlab.bench.detection import time_detection

    result = time_detection(
        "fasterrcnn_tiny_resnet", ("fasterrcnn_tiny_cnn",) * 2, size=64, train_images=12,
        test_images=4, batch_size=4, steps=1, warmup=1, eval_batches=1, device="cpu",
        precision="fp32",
    )  # fmt: skip
    assert result["steps_per_epoch"] == 3 and result["precision"] == "float32"
    assert result["train_s_per_epoch"] == pytest.approx(3 * result["s_per_step"])
    assert result["s_per_epoch"] > result["train_s_per_epoch"] > 0
    assert result["peak_memory_gib"] > 0.1  # the process's peak resident set


def test_train_command_takes_the_detection_profile_and_reports_missing_data(tmp_path, capsys):
    code = cli.main(["train", "--method", "kdml_det", "--models", "a,b", "--teacher", "c",
                     "--dataset", "kvasir_seg", "--data-root", str(tmp_path), "--profile", "paper",
                     "--out", str(tmp_path / "run")])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "datasets.simula.no" in error


def test_a_pretrained_detection_teacher_must_be_given_trained():
    from kdlab.reproduce import train_one

    data = kdlab.load_dataset("synthetic_polyps", train=2, test=2)
    config = kdlab.TrainConfig(epochs=1, batch_size=2, schedule="constant", device="cpu")
    with pytest.raises(ValueError, match="needs a trained detector: give a network or a saved"):
        train_one("kdml_det", ["fasterrcnn_tiny_cnn"] * 2, data, config=config,
                  teacher="fasterrcnn_tiny_resnet", pretrained_teacher=True)  # fmt: skip
