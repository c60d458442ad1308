"""The re-identification grids: Table 6's grid checked without Market-1501 on disk, its smoke
version run to a table with mAP and rank-1, Table 6's published numbers beside the right rows,
and the recipe settings (optimizer, betas, label smoothing) a grid gives the runner notebook."""

from __future__ import annotations

import json

import nbformat
import pytest

from kdlab import reproduce
from kdlab.cli import main as cli_main
from kdlab.reproduce.contract import CONTRACT, RUNNER_PARAMETERS, cell_parameters, declared
from kdlab.reproduce.grid import OPTIONAL_SETTINGS


def test_table6_grid_has_its_cells_and_dry_runs_without_the_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KDLAB_DATA", str(tmp_path / "empty"))  # no Market-1501 anywhere
    grid = reproduce.load_grid("tadml_table6_market1501")
    cells = grid.cells
    assert len(cells) == 2 * 4 * 3  # pairs × methods × seeds
    assert {c.models for c in cells} == {("inceptionv1", "mobilenetv1"),
                                         ("mobilenetv1", "mobilenetv1")}  # fmt: skip
    assert {c.method for c in cells} == {"independent", "dml", "adml", "tadml"}
    assert {c.dataset for c in cells} == {"market1501"} and {c.seed for c in cells} == {0, 1, 2}
    # TADML's K stays below DML's batch of 16; the other methods keep their defaults
    assert {c.params.get("topo_k") for c in cells} == {None, 8}
    assert all(c.params == ({"topo_k": 8} if c.method == "tadml" else {}) for c in cells)
    out = tmp_path / "out"
    assert cli_main(["reproduce", "tadml_table6_market1501", "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "24 cells" and not out.exists()
    # every cell trains with the retrieval paper profile: DML's own recipe
    config = reproduce.contract.settings_profile(cells[0]).train_config()
    assert (config.optimizer, config.lr, config.label_smoothing) == ("adam", 2e-4, 0.1)


def test_table6_published_numbers_are_map_rows():
    mobile = reproduce.published_for("market1501", "tadml", ["mobilenetv1"] * 2, metric="map")
    assert mobile == [[(53.84, "TADML Table 6")], [(53.65, "TADML Table 6")]]
    pair = reproduce.published_for("market1501", "dml", ["inceptionv1", "mobilenetv1"], None, "map")
    assert pair == [[(65.34, "TADML Table 6")], [(52.87, "TADML Table 6")]]
    alone = reproduce.published_for("market1501", "independent", ["inceptionv1", "mobilenetv1"],
                                    metric="map")  # fmt: skip
    assert alone == [[(65.26, "TADML Table 6")], [(46.07, "TADML Table 6")]]
    # an mAP is no accuracy: asked for accuracy, nothing matches
    assert reproduce.published_for("market1501", "dml", ["mobilenetv1"] * 2) == [[], []]
    rows = [r for r in reproduce.PUBLISHED if r["source"] == "TADML Table 6"]
    assert len(rows) == 8 and {r["metric"] for r in rows} == {"map"}
    assert {r["metric"] for r in reproduce.PUBLISHED if r["source"] != "TADML Table 6"} == {"acc"}


@pytest.fixture(scope="module")
def smoke_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("table6-smoke")
    outcomes = reproduce.run_grid("tadml_table6_smoke", out, how="direct", progress=False)
    return out, outcomes


def test_the_smoke_grid_runs_to_a_table_with_map_and_rank1(smoke_table):
    out, outcomes = smoke_table
    assert [o["status"] for o in outcomes] == ["ok"] * 4
    results, runs, curves = reproduce.load_results(out)
    assert set(results["metric"]) == {"map"} and len(results) == 4 * 3  # 4 methods × 3 rows
    assert {"rank1_mean", "rank5_mean", "rank10_mean"} <= set(results.columns)
    for _, run in runs.iterrows():  # the table's numbers are the runs' summaries
        summary = json.loads((out / run["run"] / "summary.json").read_text())
        entry = summary["networks"][run["network"]]
        assert run["final"] == pytest.approx(entry["final_map"])
        assert run["final_rank1"] == pytest.approx(entry["final_rank1"])
        overlaps = [v for k, v in summary["agreement"].items() if k.startswith("agree/")]
        assert len(overlaps) == 1 and run["agree"] == pytest.approx(overlaps[0])
    config = json.loads((out / runs["run"][0] / "config.json").read_text())["train"]
    assert config["label_smoothing"] == 0.1 and config["optimizer"] == "adam"
    table = (out / "results.md").read_text()
    assert "Test mAP (%)" in table and "| final rank1 | final rank5 | final rank10 |" in table
    assert "Test top-1 accuracy" not in table


def test_optional_recipe_settings_reach_the_runner_and_are_refused_elsewhere(tmp_path):
    assert set(OPTIONAL_SETTINGS) <= set(RUNNER_PARAMETERS)
    # a notebook that keeps the contract but declares no optional setting
    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "\n".join(f"{name} = None" for name in ["models", *CONTRACT]),
        metadata={"tags": ["parameters"]})])  # fmt: skip
    plain.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}  # fmt: skip
    nbformat.write(plain, tmp_path / "plain.ipynb")
    grid = {"profile": "smoke", "datasets": ["reid_digits"],
            "settings": {"optimizer": "sgd", "betas": [0.8, 0.99], "label_smoothing": 0.2},
            "experiments": [{"method": "independent", "models": ["cnn_tiny"]},
                            {"method": "dml", "models": ["cnn_tiny"] * 2,
                             "notebook": "plain.ipynb"}]}  # fmt: skip
    cells = reproduce.load_grid(grid, tmp_path).cells
    runner = cell_parameters(cells[0], list(declared("runner")), tmp_path, "data")
    assert (runner["optimizer"], runner["betas"], runner["label_smoothing"]) == ("sgd",
                                                                                 [0.8, 0.99], 0.2)  # fmt: skip
    with pytest.raises(ValueError, match="has no parameter 'optimizer'"):
        cell_parameters(cells[1], list(declared(cells[1].notebook)), tmp_path, "data")
    bad = {"profile": "smoke", "settings": {"optimiser": "adam"},
           "experiments": [{"method": "independent", "models": ["cnn_tiny"]}]}  # fmt: skip
    with pytest.raises(ValueError, match="unknown key 'optimiser'; allowed: .*label_smoothing"):
        reproduce.load_grid(bad)
    bad["settings"] = {"optimizer": "rmsprop"}
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        reproduce.load_grid(bad)


@pytest.mark.notebook
def test_the_runner_notebook_trains_with_the_grids_recipe(tmp_path, kernel_environment):
    """One cell through papermill: the runner passes optimizer, betas and label smoothing to
    the retrieval profile, and the run's config records them."""
    grid = {"profile": "smoke", "datasets": ["reid_digits"], "seeds": [0],
            "settings": {"optimizer": "sgd", "betas": [0.8, 0.99], "label_smoothing": 0.2,
                         "epochs": 1, "lr": 0.05},
            "experiments": [{"method": "independent", "models": ["cnn_tiny"]}]}  # fmt: skip
    outcomes = reproduce.run_grid(grid, tmp_path / "out", progress=False)
    assert outcomes[0]["status"] == "ok", outcomes[0].get("error")
    run = tmp_path / "out" / outcomes[0]["run"]
    train = json.loads((run / "config.json").read_text())["train"]
    assert (train["optimizer"], train["betas"], train["label_smoothing"]) == ("sgd", [0.8, 0.99],
                                                                              0.2)  # fmt: skip
    assert json.loads((run / "summary.json").read_text())["metric"] == "map"
