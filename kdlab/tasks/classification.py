"""The classification task: what every classification method reports every epoch on the held-out
test split (METHODS.md, "Metrics").

- top-1 accuracy of every network, in percent: ``acc/<name>``;
- the ensemble's accuracy, from the *mean of the softmax outputs* of its members
  (not a majority vote): ``acc/ensemble``;
- for every pair of ensemble members, the fraction of test samples on which their top-1
  predictions agree (``agree/<a>-<b>``, percent) and their mean JS divergence
  (``js/<a>-<b>``, nats, at most ln 2);
- with ``extra_metrics`` (a data set of an unbalanced task chooses them), for every network and
  the ensemble: ``auroc/<name>`` (:func:`kdlab.metrics.auroc`, in [0, 1], from the softmax of the
  ``positive`` class) and ``balanced_acc/<name>`` (:func:`kdlab.metrics.balanced_accuracy`,
  percent), where plain accuracy would reward the majority class.

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

from ..metrics import auroc, balanced_accuracy, pairwise_js
from . import Task, register_task

EXTRA_METRICS = {"auroc": "AUROC", "balanced_acc": "balanced accuracy (%)"}

__all__ = ["Classification", "evaluate"]


@register_task
class Classification(Task):
    """Image classification: batches of images and labels from the device-resident loader
    (:class:`kdlab.data.DeviceLoader`: random crop and flip on the device; ``views`` > 1
    independently augmented views per image where the method asks), scored by top-1 accuracy
    (:func:`evaluate`)."""

    name = "classification"
    metric = "acc"
    metric_label = "top-1 accuracy (%)"
    multi_view = True

    def __init__(self, extra_metrics: Sequence[str] = (), positive: int = 1) -> None:
        """``extra_metrics``: any of ``auroc`` and ``balanced_acc``, reported besides accuracy
        (e.g. by a two-class, unbalanced medical data set); ``positive``: the class whose
        probability AUROC ranks by, for two classes."""
        unknown = sorted(set(extra_metrics) - set(EXTRA_METRICS))
        if unknown:
            raise ValueError(
                f"unknown metric {unknown[0]!r}; the classification task also reports: "
                + ", ".join(EXTRA_METRICS)
            )
        self.extra_metrics = tuple(extra_metrics)
        self.positive = int(positive)

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric, *self.extra_metrics)

    def __repr__(self) -> str:
        if not self.extra_metrics:
            return "Classification()"
        return f"Classification(extra_metrics={self.extra_metrics!r}, positive={self.positive})"

    def loaders(self, dataset, config, device, *, channels_last: bool = False, views: int = 1):
        from ..data import DeviceLoader

        train = DeviceLoader.train(
            dataset, config.batch_size, device, seed=config.seed, channels_last=channels_last,
            views=views,
        )  # fmt: skip
        test = DeviceLoader.test(
            dataset, config.eval_batch_size, device, channels_last=channels_last
        )
        return train, test

    def evaluate(self, networks, test, ensemble=()):
        return evaluate(networks, test, ensemble, self.extra_metrics, self.positive)


@torch.no_grad()
def evaluate(
    networks: Mapping[str, nn.Module],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    ensemble: Sequence[str] = (),
    extra_metrics: Sequence[str] = (),
    positive: int = 1,
) -> dict[str, float]:
    """Test metrics of ``networks`` over ``batches``; ``ensemble`` names the ensemble members;
    ``extra_metrics`` and ``positive`` as :class:`Classification`'s.

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
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in correct}  # softmax, for extras
    labels: list[torch.Tensor] = []
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
        if extra_metrics:
            for name in networks:
                kept[name].append(F.softmax(logits[name], dim=1))
            if len(ensemble) >= 2:
                kept["ensemble"].append(mean)
            labels.append(y)
        count += len(y)
    for name, net in networks.items():
        net.train(modes[name])
    keys = [f"acc/{n}" for n in correct]
    keys += [f"agree/{a}-{b}" for a, b in pairs] + [f"js/{a}-{b}" for a, b in pairs]
    values = [100 * c for c in correct.values()]
    values += [100 * agree[p] for p in pairs] + [js[p] for p in pairs]
    host = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    host = host.cpu() / count  # the one host transfer of the evaluation
    record = dict(zip(keys, host.tolist()))
    if extra_metrics:
        record.update(_extra(kept, torch.cat(labels), extra_metrics, positive))
    return record


def _extra(kept, labels, extra_metrics, positive) -> dict[str, float]:
    """``auroc/<name>`` and ``balanced_acc/<name>`` from every network's (and the ensemble's)
    softmax outputs over the whole test split."""
    record = {}
    for name, chunks in kept.items():
        probs = torch.cat(chunks)
        if "auroc" in extra_metrics:
            record[f"auroc/{name}"] = auroc(probs, labels, positive)
        if "balanced_acc" in extra_metrics:
            record[f"balanced_acc/{name}"] = balanced_accuracy(
                probs.argmax(1), labels, probs.shape[1]
            )
    return record
