"""The task axis: data sets, models and methods found by name, and the loop asking the task."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import kdlab
from kdlab.data import DATASETS, load_dataset, register_dataset
from kdlab.models import available_models, build_model, model_kind, register_model
from kdlab.tasks import TASKS, Task, get_task, register_task
from kdlab.tasks.classification import Classification


def test_every_registry_lists_what_it_holds():
    assert list(DATASETS)[0] == "digits"  # the embedded set first
    assert {"digits", "cifar10", "cifar100", "pathmnist"} <= set(DATASETS)
    assert DATASETS["digits"].embedded and DATASETS["digits"].task == "classification"
    assert "classification" in TASKS and get_task("classification") is Classification
    assert "wrn_<depth>_<width>" in available_models("classifier")
    assert model_kind("resnet20") == "classifier" and model_kind("wrn_16_2") == "classifier"
    assert build_model("cnn_tiny", 10, 1).kind == "classifier"


def test_unknown_names_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown task 'segmentation'; known: classification"):
        get_task("segmentation")
    with pytest.raises(ValueError, match=r"dataset 'digits' has no option 'size' \(its options"):
        load_dataset("digits", size=32)
    with pytest.raises(ValueError, match="model 'cnn_tiny' has no option 'pretrained'"):
        build_model("cnn_tiny", 10, 1, pretrained=True)
    with pytest.raises(ValueError, match="Wide ResNet depth 12"):
        build_model("wrn_12_2", 10)
    with pytest.raises(ValueError, match="taken"):
        register_dataset("digits")(lambda root, download: None)
    with pytest.raises(ValueError, match="taken"):
        register_model("resnet20")(lambda n, c, arch: None)


def test_the_loop_asks_the_data_sets_task(digits, fast_config, monkeypatch):
    """A task of its own (here: classification scored by the error rate under another key) is
    what fit evaluates, what the history ranks and what the summary reports."""
    calls = []

    class ErrorRate(Classification):
        name = "error-rate-test"
        metric = "err"

        def evaluate(self, networks, test, ensemble=()):
            calls.append(sorted(networks))
            record = super().evaluate(networks, test, ensemble)
            return {k.replace("acc/", "err/"): 100 - v for k, v in record.items()}

    monkeypatch.setitem(TASKS, ErrorRate.name, ErrorRate)
    monkeypatch.setattr(kdlab.get_method("independent"), "tasks", ("error-rate-test",))
    data = dataclasses.replace(digits, task=ErrorRate())
    result = kdlab.run("independent", ["cnn_tiny"], data, config=fast_config, progress=False)
    assert calls == [["net1"], ["net1"]]
    assert result.history.metric == "err" and result.history.networks() == ["net1"]
    entry = result.summary["networks"]["net1"]
    assert result.summary["metric"] == "err" and result.summary["task"] == "error-rate-test"
    assert entry["final_err"] == result.history[-1]["err/net1"]
    assert entry["best_err"] == max(r["err/net1"] for r in result.history)


def test_a_method_refuses_a_task_it_does_not_train(digits, fast_config, monkeypatch):
    monkeypatch.setattr(kdlab.get_method("dml"), "tasks", ("retrieval",))
    with pytest.raises(ValueError, match="method 'dml' does not train the classification task"):
        kdlab.run("dml", ["cnn_tiny", "cnn_tiny"], digits, config=fast_config, progress=False)


def test_a_network_of_the_wrong_kind_is_refused(digits, fast_config, monkeypatch):
    class Boxes(Task):
        name = "boxes-test"
        model_kind = "detector"

    monkeypatch.setitem(TASKS, Boxes.name, Boxes)
    monkeypatch.setattr(kdlab.get_method("independent"), "tasks", ("boxes-test",))
    data = dataclasses.replace(digits, task=Boxes())
    with pytest.raises(ValueError, match="model 'cnn_tiny' is a classifier; dataset 'digits'"):
        kdlab.run("independent", ["cnn_tiny"], data, config=fast_config, progress=False)
    method = kdlab.get_method("independent")({"net1": build_model("cnn_tiny", 10, 1)})
    with pytest.raises(ValueError, match=r"network net1 \(cnn_tiny\) is a classifier"):
        kdlab.fit(method, data, fast_config, progress=False)


def test_a_task_name_is_registered_once():
    class Other(Classification):
        pass  # the same name, "classification"

    with pytest.raises(ValueError, match="task name 'classification' is taken"):
        register_task(Other)


def test_the_classification_task_builds_the_device_loaders(digits, fast_config):
    train, test = digits.task.loaders(digits, fast_config, torch.device("cpu"))
    assert len(train) == 4 and train.min_batch_size == 50 and train.augment
    x, y = next(iter(test))
    assert x.shape == (len(digits.test_labels), 1, 8, 8) and not test.augment
    assert torch.equal(y, digits.test_labels)
