"""The papers' numbers (METHODS.md), kept as data in ``published.csv`` beside this file.

One row per published result: ``source``, ``dataset``, ``method``, ``models`` (the trained
networks in order, space-separated), ``teacher`` (empty: any or none), ``acc`` (test top-1 in
percent, one per network, space-separated), ``pair`` (``yes``: the row holds for exactly these
networks together; ``no``: one network's number whatever its partners, matched by its
architecture alone), ``protocol`` (how the paper trained, in words) and ``metric`` (what the
``acc`` column holds: the task's headline metric, ``acc`` for top-1 accuracy, ``map`` for
mAP; a row without it, ending at ``protocol``, is ``acc``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("published.csv")


def _read(path: Path = TABLE) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [
            {
                "source": row["source"],
                "dataset": row["dataset"],
                "method": row["method"],
                "models": tuple(row["models"].split()),
                "teacher": row["teacher"] or None,
                "acc": tuple(float(a) for a in row["acc"].split()),
                "pair": row["pair"] == "yes",
                "protocol": row["protocol"],
                "metric": row.get("metric") or "acc",
            }
            for row in csv.DictReader(f)
        ]


PUBLISHED: list[dict[str, Any]] = _read()


def published_for(
    dataset: str | None,
    method: str,
    models: Sequence[str],
    teacher: str | None = None,
    metric: str = "acc",
) -> list[list[tuple[float, str]]]:
    """The published numbers of ``metric`` for every trained network of a cell: one list per
    network of ``(value, source)`` pairs (empty where nothing published matches)."""
    found: list[list[tuple[float, str]]] = [[] for _ in models]
    for row in PUBLISHED:
        if row["dataset"] != dataset or row["method"] != method or row["metric"] != metric:
            continue
        if row["teacher"] is not None and row["teacher"] != teacher:
            continue
        if row["pair"]:
            if tuple(models) == row["models"]:
                for i, acc in enumerate(row["acc"]):
                    found[i].append((acc, row["source"]))
        else:
            for i, arch in enumerate(models):
                if arch == row["models"][0]:
                    found[i].append((row["acc"][0], row["source"]))
    return found
