"""The classification task: what every classification method reports every epoch on the held-out
test split (METHODS.md, "Metrics").

- top-1 accuracy of every network, in percent: ``acc/<name>``;
- the ensemble's accuracy, from the *mean of the softmax outputs* of its members
  (not a majority vote): ``acc/ensemble``;
- for every pair of ensemble members, the fraction of test samples on which their top-1
  predictions agree (``agree/<a>-<b>``, percent) and their mean JS divergence
  (``js/<a>-<b>``, nats, at most ln 2).

Evaluation runs in float32, never under the training's autocast: the same weights give the
same metrics whichever precision trained them (bf16 logits would move agreement and JS).
Everything is accumulated on the device; one host transfer at the end.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import pairwise_js
from . import Task, register_task

__all__ = ["Classification", "evaluate"]


@register_task
class Classification(Task):
    """Image classification: batches of images and labels from the device-resident loader
    (:class:`kdlab.data.DeviceLoader`: random crop and flip on the device), scored by top-1
    accuracy (:func:`evaluate`)."""

    name = "classification"
    metric = "acc"
    metric_label = "top-1 accuracy (%)"

    def loaders(self, dataset, config, device, *, channels_last: bool = False):
        from ..data import DeviceLoader

        train = DeviceLoader.train(
            dataset, config.batch_size, device, seed=config.seed, channels_last=channels_last
        )
        test = DeviceLoader.test(
            dataset, config.eval_batch_size, device, channels_last=channels_last
        )
        return train, test

    def evaluate(self, networks, test, ensemble=()):
        return evaluate(networks, test, ensemble)


@torch.no_grad()
def evaluate(
    networks: Mapping[str, nn.Module],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    ensemble: Sequence[str] = (),
) -> dict[str, float]:
    """Test metrics of ``networks`` over ``batches``; ``ensemble`` names the ensemble members.

    Float32 (autocast is switched off for the pass, should the caller be inside one). The
    networks are put in eval mode for the pass and returned to their previous mode.
    """
    modes = {name: net.training for name, net in networks.items()}
    for net in networks.values():
        net.eval()
    pairs = list(itertools.combinations(ensemble, 2))
    correct = {name: 0 for name in networks}
    if len(ensemble) >= 2:
        correct["ensemble"] = 0
    agree = {pair: 0 for pair in pairs}
    js = {pair: 0 for pair in pairs}
    count, device = 0, "cpu"
    for x, y in batches:
        device = y.device
        with torch.autocast(device.type, enabled=False):
            logits = {name: net(x).float() for name, net in networks.items()}
        preds = {name: z.argmax(1) for name, z in logits.items()}
        for name in networks:
            correct[name] = correct[name] + (preds[name] == y).sum()
        if len(ensemble) >= 2:
            probs = {name: F.softmax(logits[name], dim=1) for name in ensemble}
            mean = torch.stack(list(probs.values())).mean(0)
            correct["ensemble"] = correct["ensemble"] + (mean.argmax(1) == y).sum()
            for a, b in pairs:
                agree[(a, b)] = agree[(a, b)] + (preds[a] == preds[b]).sum()
                js[(a, b)] = js[(a, b)] + pairwise_js(probs[a], probs[b]).sum()
        count += len(y)
    for name, net in networks.items():
        net.train(modes[name])
    keys = [f"acc/{n}" for n in correct]
    keys += [f"agree/{a}-{b}" for a, b in pairs] + [f"js/{a}-{b}" for a, b in pairs]
    values = [100 * c for c in correct.values()]
    values += [100 * agree[p] for p in pairs] + [js[p] for p in pairs]
    host = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    host = host.cpu() / count  # the one host transfer of the evaluation
    return dict(zip(keys, host.tolist()))
