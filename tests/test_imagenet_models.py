"""The ImageNet-sized peers of TADML Table 6 (timm's MobileNetV1, torchvision's GoogLeNet and
ResNet-50): the kit's model interface, a training step in channels_last, ImageNet weights
through the libraries' own API, and a one-line error when they cannot be had offline."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlab.models import MODELS, ModelEntry, build_model, model_kind
from kdlab.models import imagenet as family

ROOT = Path(__file__).resolve().parents[1]
STAGES = {  # channels, and the height of each stage's map for a 64×32 input
    "mobilenetv1": ([64, 128, 256, 512, 1024], [32, 16, 8, 4, 2]),
    "inceptionv1": ([64, 192, 480, 832, 1024], [16, 8, 8, 4, 2]),
    "resnet50": ([256, 512, 1024, 2048], [16, 8, 4, 2]),
}
BACKBONE_PARAMS = {"mobilenetv1": 3.21e6, "inceptionv1": 5.60e6, "resnet50": 23.51e6}


@pytest.fixture(scope="module", params=sorted(STAGES))
def network(request):
    torch.manual_seed(0)
    return request.param, build_model(request.param, 751, 3)


def test_the_kits_interface(network):
    name, net = network
    channels, heights = STAGES[name]
    x = torch.randn(2, 3, 64, 32)
    net.eval()
    logits, features = net(x, return_features=True)
    assert logits.shape == (2, 751) and torch.equal(logits, net(x))
    assert [f.shape[1] for f in features] == channels == net.stage_channels
    assert [f.shape[2] for f in features] == heights
    assert net.feature_dim == channels[-1] and net.arch == name and net.kind == "classifier"
    assert model_kind(name) == "classifier"
    # the classifier reads the pooled last stage, as the kit's retrieval embedding assumes
    pooled = features[-1].mean((2, 3))
    assert torch.allclose(net.classifier(pooled), logits, atol=1e-5)
    backbone = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("classifier"))
    assert backbone == pytest.approx(BACKBONE_PARAMS[name], rel=0.01)


def test_a_training_step_in_channels_last_and_another_input(network):
    name, net = network
    net = net.train().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 32).contiguous(memory_format=torch.channels_last)
    logits, features = net(x, return_features=True)
    (logits.logsumexp(1).mean() + features[-1].square().mean()).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    net.zero_grad()
    gray = build_model(name, 10, 1)  # one input channel: the first convolution rebuilt
    assert gray(torch.randn(2, 1, 32, 16)).shape == (2, 10)


def test_pretrained_weights_come_through_torchvisions_weight_api(monkeypatch):
    """``pretrained=True`` asks torchvision's weights enum for its state dict (here replaced by
    a known one, as the download is not possible offline): the backbone holds it, the
    identity classifier is new, and GoogLeNet's input transform is applied."""
    from torchvision.models import GoogLeNet_Weights, googlenet

    reference = googlenet(weights=None, aux_logits=True, init_weights=True, num_classes=1000)
    with torch.no_grad():
        reference.conv1.conv.weight.fill_(0.25)
    asked = []

    def state_dict(weights, *args, **kwargs):
        asked.append(weights)
        return reference.state_dict()

    monkeypatch.setattr(GoogLeNet_Weights, "get_state_dict", state_dict)
    net = build_model("inceptionv1", 751, 3, pretrained=True)
    assert asked == [GoogLeNet_Weights.IMAGENET1K_V1]
    conv = net.stages[0][0].conv
    assert torch.equal(conv.weight, torch.full_like(conv.weight, 0.25))
    assert net.classifier.out_features == 751
    assert isinstance(net.stem, family._TransformInput)
    x = torch.zeros(1, 3, 1, 1)  # ImageNet's mean pixel maps to 0 − its shift
    assert net.stem(x).flatten().tolist() == pytest.approx([-0.03, -0.088, -0.188], abs=1e-3)
    # summed over the colour channels for one input channel
    gray = build_model("inceptionv1", 10, 1, pretrained=True)
    assert torch.equal(gray.stages[0][0].conv.weight, torch.full((64, 1, 7, 7), 0.75))


OFFLINE = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("network unreachable (blocked by the test)")
socket.socket.connect = refuse
socket.create_connection = refuse
from kdlab.models import build_model
from kdlab.models.imagenet import WeightsNotFoundError
name = sys.argv[1]
try:
    build_model(name, 751, 3, pretrained=True)
except WeightsNotFoundError as error:
    print(repr(str(error)))
    sys.exit(3)
"""


@pytest.mark.parametrize("name", sorted(STAGES))
def test_offline_weights_are_a_one_line_error_not_a_hang(name, tmp_path):
    """Empty caches (torch hub and Hugging Face), no network: one line naming the network and
    the cache, in a child process (a hang would be killed by the timeout and fail)."""
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", OFFLINE, name], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 3, done.stderr[-2000:]
    message = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert "\n" not in message and message.startswith(f"the ImageNet weights of {name}")
    assert str(tmp_path) in message and "pretrained=False" in message


def test_the_cli_reports_missing_weights_on_one_line(monkeypatch, capsys, tmp_path):
    """A network whose weights cannot be had ends a command in one line and exit code 2."""
    from kdlab.cli import main

    def missing(num_classes, in_channels, arch):
        raise family.WeightsNotFoundError(f"the ImageNet weights of {arch} are not in X")

    monkeypatch.setitem(MODELS, "resnet50", ModelEntry("resnet50", missing))
    code = main(["train", "--method", "independent", "--models", "resnet50", "--dataset",
                 "reid_digits", "--epochs", "1", "--out", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "weights of resnet50" in err
