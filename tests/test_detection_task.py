"""The detection task: mAP and the fused ensemble against hand-worked examples, the task
contract in the loop, the detectors (names, kinds, num_classes, weights offline), and a saved
detector rebuilt."""

from __future__ import annotations

import socket
import urllib.error

import pytest
import torch
from torch import nn

import kdlab
from kdlab.data.boxes import DetectionLoader
from kdlab.models import build_model, model_kind
from kdlab.models import detection as detectors
from kdlab.models import without_weights as models_without_weights
from kdlab.tasks.detection import evaluate, fuse_boxes, mean_average_precision
from kdlab.train import check_task


def _pred(boxes, scores, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.ones(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "scores": torch.tensor(scores, dtype=torch.float32), "labels": labels}


# Two objects; a false positive scored 0.9 above a match of IoU 0.68 scored 0.8; the second
# object missed. Ranked: FP (P 0, R 0), TP (P ½, R ½). COCO's 101-point interpolation: the
# precision is ½ at the 51 recall points 0, 0.01, …, 0.50 and 0 above, so AP = ½·51/101 at every
# IoU threshold the match passes (0.50, 0.55, 0.60, 0.65: 4 of 10), 0 at the others.
TRUTH = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]]),
          "labels": torch.tensor([1, 1])}]  # fmt: skip
PREDICTED = [_pred([[60, 60, 70, 70], [0, 0, 10, 6.8]], [0.9, 0.8])]  # IoU 68/100
AP = 0.5 * 51 / 101


def test_map_and_map50_on_a_hand_worked_example():
    result = mean_average_precision(PREDICTED, TRUTH)
    assert result["map50"] == pytest.approx(100 * AP, abs=1e-4)  # 25.2475, not the area 25.0
    assert result["map"] == pytest.approx(100 * AP * 4 / 10, abs=1e-4)  # 10.0990
    perfect = mean_average_precision([_pred(TRUTH[0]["boxes"].tolist(), [0.9, 0.8])], TRUTH)
    assert perfect == {"map": pytest.approx(100.0), "map50": pytest.approx(100.0)}


def test_weighted_boxes_fusion_on_a_hand_worked_example():
    """Student 1 finds the object at (0, 0, 10, 10) with 0.9 and a second box alone with 0.8;
    student 2 finds the object at (0, 0, 10, 12) with 0.6 (IoU 100/120 > 0.55: one object).
    Fused: corners averaged with the scores as weights, y2 = (10·0.9 + 12·0.6)/1.5 = 10.8;
    score = mean(0.9, 0.6) · 2/2 = 0.75. The lone box: 0.8 · 1/2 = 0.4. The image is 100 high and
    200 wide, so a normalisation by (H, W) in the wrong order would move the boxes."""
    members = [
        _pred([[0, 0, 10, 10], [150, 50, 190, 90]], [0.9, 0.8]),
        _pred([[0, 0, 10, 12]], [0.6]),
    ]
    fused = fuse_boxes(members, (100, 200))
    assert torch.allclose(fused["scores"], torch.tensor([0.75, 0.4]))
    expected = torch.tensor([[0.0, 0.0, 10.0, 10.8], [150.0, 50.0, 190.0, 90.0]])
    assert torch.allclose(fused["boxes"], expected, atol=1e-4)
    assert fused["labels"].tolist() == [1, 1] and fused["labels"].dtype == torch.int64
    empty = fuse_boxes([_pred([], []), _pred([], [])], (8, 8))
    assert empty["boxes"].shape == (0, 4)


class FixedDetector(nn.Module):
    """Returns the same detections for every image, in eval mode; records the grad mode."""

    kind = "detector"

    def __init__(self, detections):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.detections = detections
        self.saw_grad = None

    def forward(self, images):
        assert not self.training, "evaluated in train mode"
        self.saw_grad = torch.is_grad_enabled()
        return [dict(self.detections) for _ in images]


def test_evaluate_scores_each_network_and_the_fused_ensemble():
    images = torch.zeros(1, 3, 100, 100)
    good = FixedDetector(PREDICTED[0])
    missing = FixedDetector(_pred([[30, 30, 40, 40]], [0.7]))  # finds the second object only
    nets = {"a": good, "b": missing}
    for net in nets.values():
        net.train()
    record = evaluate(nets, [(images, TRUTH)], ensemble=["a", "b"])
    assert record["map50/a"] == pytest.approx(100 * AP, abs=1e-4)
    # b alone: one true positive of two objects, nothing above it: AP = 51/101 at every IoU
    assert record["map/b"] == pytest.approx(100 * 51 / 101, abs=1e-4)
    # fused: nothing overlaps across members, so each box keeps half its score: FP 0.45,
    # TP(a, IoU 0.68) 0.4, TP(b) 0.35 → P ½ at R ½, P ⅔ at R 1: interpolated, ⅔ everywhere
    assert record["map50/ensemble"] == pytest.approx(100 * 2 / 3, abs=1e-4)
    # at IoU ≥ 0.7 a's match fails: FP, FP, TP → P ⅓ at R ½; AP = ⅓·51/101 at 6 of 10 IoUs
    expected = (4 * 2 / 3 + 6 * 51 / 101 / 3) / 10
    assert record["map/ensemble"] == pytest.approx(100 * expected, abs=1e-4)
    assert all(net.training for net in nets.values()) and good.saw_grad is False
    assert list(record) == ["map/a", "map50/a", "map/b", "map50/b", "map/ensemble",
                            "map50/ensemble"]  # fmt: skip


# --------------------------------------------------------------------------- the task contract
def test_detection_task_contract():
    data = kdlab.load_dataset("synthetic_polyps", train=6, test=3)
    task = data.task
    assert (task.name, task.metric, task.metrics, task.model_kind) == (
        "detection",
        "map",
        ("map", "map50"),
        "detector",
    )
    config = kdlab.TrainConfig(epochs=1, batch_size=4, schedule="constant", seed=0)
    train, test = task.loaders(data, config, torch.device("cpu"))
    assert isinstance(train, DetectionLoader) and len(train) == 2 and train.min_batch_size == 3
    assert test.batch_size == 4  # not eval_batch_size's 1,024 images at once
    method = kdlab.get_method("kdml_det")
    tiny = {f"student{i}": build_model("fasterrcnn_tiny_cnn", 2) for i in (1, 2)}
    check_task(method(tiny, teacher=build_model("fasterrcnn_tiny_resnet", 2)), data)
    digits = kdlab.load_dataset("digits")
    with pytest.raises(ValueError, match="does not train the classification task"):
        check_task(method(tiny, teacher=build_model("fasterrcnn_tiny_resnet", 2)), digits)
    dml = kdlab.get_method("dml")({"net1": build_model("cnn_tiny", 2, 3),
                                   "net2": build_model("cnn_tiny", 2, 3)})  # fmt: skip
    with pytest.raises(ValueError, match="does not train the detection task"):
        check_task(dml, data)
    with pytest.raises(ValueError, match="is a classifier"):
        kdlab.run("kdml_det", ["cnn_tiny", "cnn_tiny"], data, teacher="fasterrcnn_tiny_resnet")


def test_profiles_follow_the_named_dataset_task():
    smoke = kdlab.profile("smoke", dataset="synthetic_polyps")
    assert smoke.teacher == "fasterrcnn_tiny_resnet" and smoke.batch_size == 8
    paper = kdlab.profile("paper", task="detection")
    assert paper.dataset == "kvasir_seg" and paper.student.endswith("_coco")
    assert kdlab.profile("smoke").dataset == "digits"  # classification stays the default


# --------------------------------------------------------------------------- the detectors
def test_detector_names_kinds_and_the_num_classes_convention():
    names = kdlab.available_models("detector")
    for name in (
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_resnet50_fpn_coco",
        "fasterrcnn_tiny_resnet",
        "fasterrcnn_tiny_cnn",
    ):
        assert name in names and model_kind(name) == "detector"  # fmt: skip
    assert "resnet20" not in names
    for name in ("fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"):
        net = build_model(name, 3)  # two classes + background
        assert net.kind == "detector" and net.arch == name
        assert net.roi_heads.box_predictor.cls_score.out_features == 3
        assert net.roi_heads.box_head.fc7.out_features == 1024  # the shared box-head shape
    with pytest.raises(ValueError, match="in_channels must be 3"):
        build_model("fasterrcnn_tiny_cnn", 2, 1)
    with pytest.raises(ValueError, match="has no pretrained weights"):
        build_model("fasterrcnn_tiny_cnn", 2, pretrained=True)


def test_detectors_keep_the_image_size():
    net = build_model("fasterrcnn_tiny_cnn", 2).eval()
    images = torch.rand(2, 3, 48, 80)
    image_list, _ = net.transform(images)
    assert image_list.image_sizes == [(48, 80), (48, 80)]  # torchvision's default: 800 px
    with torch.no_grad():
        boxes = net(images)[0]["boxes"]
    assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 48).all()


def test_coco_weights_offline_are_a_one_line_error_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    seen = {}

    def offline(url, dst, hash_prefix=None, progress=True):
        seen["timeout"] = socket.getdefaulttimeout()
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(detectors.WeightsNotFoundError) as error:
        build_model("fasterrcnn_mobilenet_v3_large_fpn_coco", 2)
    message = str(error.value)
    assert "\n" not in message and "download.pytorch.org" in message and str(tmp_path) in message
    assert seen["timeout"] == detectors.DOWNLOAD_TIMEOUT  # a silent network cannot hang it
    assert socket.getdefaulttimeout() is None  # and the process's default is restored


def test_a_saved_detector_is_rebuilt_by_load_network(tmp_path):
    data = kdlab.load_dataset("synthetic_polyps", train=2, test=2)
    torch.manual_seed(0)
    net = build_model("fasterrcnn_tiny_cnn", data.num_classes)
    kdlab.save_network(tmp_path / "student.pt", net, "fasterrcnn_tiny_cnn", data)
    again = kdlab.load_network(tmp_path / "student.pt")
    assert again.kind == "detector" and again.arch == "fasterrcnn_tiny_cnn"
    images = data.test_images.float() / 255
    with torch.no_grad():
        a, b = net.eval()(images), again.eval()(images)
    assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(a, b))


def test_a_saved_pretrained_name_is_rebuilt_without_downloading(tmp_path, monkeypatch):
    """A network saved under a ``…_coco`` name holds its weights: rebuilding it for them must
    not fetch COCO's (offline that would be an error)."""
    data = kdlab.load_dataset("synthetic_polyps", train=2, test=2)
    arch = "fasterrcnn_mobilenet_v3_large_fpn_coco"
    net = build_model(arch, data.num_classes, pretrained=False)
    kdlab.save_network(tmp_path / "student.pt", net, arch, data)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    again = kdlab.load_network(tmp_path / "student.pt")
    assert again.arch == arch
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                  again.state_dict().values()))  # fmt: skip
    assert models_without_weights(arch) == {"pretrained": False}
    assert models_without_weights("resnet20") == {}
