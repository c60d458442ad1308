"""The papers' numbers (kdlab/METHODS.md), kept as data in ``published.csv`` beside this file:
the one place every published number lives. Notebooks read it with :func:`quote` and
:func:`lookup`; results tables match it to a grid's cells with :func:`published_for`.

One row per published result: ``source`` (the table or README it comes from), ``dataset``,
``method`` (kdlab's name for it; empty where the table does not say what was trained, or it is
no kdlab setting), ``models`` (the trained networks in order, space-separated; empty where the
source does not name them), ``teacher`` (empty: any or none), ``acc`` (one number per network,
space-separated, as the source prints it), ``pair`` (``yes``: the row holds for exactly these
networks together; ``no``: one network's number whatever its partners, matched by its
architecture alone), ``protocol`` (how the source trained, in words), ``metric`` (what the
``acc`` column holds: the task's headline metric, ``acc`` for top-1 accuracy in percent, ``map``
for mAP; empty: ``acc``), ``params`` (``key=value`` pairs of the method's parameters the row
holds for, space-separated; empty: the method's defaults, or not stated) and ``label`` (the row's
name in its table, e.g. ``K = 16``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("published.csv")
TOP1 = "acc"  # the metric of a row that names none: top-1 accuracy, in percent


def _value(text: str) -> Any:
    """A parameter value as written in the CSV: an int, a float, a bool or the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _read(path: Path = TABLE) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {
                "source": row["source"],
                "dataset": row["dataset"],
                "method": row["method"],
                "models": tuple(row["models"].split()),
                "teacher": row["teacher"] or None,
                "acc": tuple(float(a) for a in row["acc"].split()),
                "printed": tuple(row["acc"].split()),  # as the source prints them
                "pair": row["pair"] == "yes",
                "protocol": row["protocol"],
                # Rows written before these columns existed: top-1, the defaults, no label.
                "metric": row.get("metric") or TOP1,
                "params": {
                    key: _value(value)
                    for key, _, value in (
                        p.partition("=") for p in (row.get("params") or "").split()
                    )
                },
                "label": row.get("label") or "",
            }
            for row in csv.DictReader(f)
        ]


PUBLISHED: list[dict[str, Any]] = _read()


def _holds_for(row: Mapping, method: str, params: Mapping[str, Any] | None) -> bool:
    """Whether a row's parameters are the cell's: each is compared with the cell's value, or
    with the method's default where the cell does not set it."""
    if not row["params"]:
        return True
    from ..methods import METHODS
    from ..methods.base import make_params

    if method not in METHODS:
        return False
    try:
        effective = vars(make_params(METHODS[method], dict(params or {})))
    except (TypeError, ValueError):
        return False
    return all(effective.get(k) == v for k, v in row["params"].items())


def published_for(
    dataset: str | None,
    method: str,
    models: Sequence[str],
    teacher: str | None = None,
    metric: str = TOP1,
    *,
    params: Mapping[str, Any] | None = None,
) -> list[list[tuple[float, str]]]:
    """The published numbers of ``metric`` for every trained network of a cell: one list per
    network of ``(value, source)`` pairs (empty where nothing published matches). A row with parameters
    matches only a cell with the same values (``params`` over the method's defaults); a row
    that names no method or no networks matches no cell."""
    found: list[list[tuple[float, str]]] = [[] for _ in models]
    for row in PUBLISHED:
        if row["dataset"] != dataset or row["method"] != method or row["metric"] != metric:
            continue
        if not row["method"] or not row["models"]:
            continue
        if row["teacher"] is not None and row["teacher"] != teacher:
            continue
        if not _holds_for(row, method, params):
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


def lookup(source: str | None = None, **where: Any) -> list[dict[str, Any]]:
    """The rows of ``published.csv`` from ``source`` whose fields equal every criterion of
    ``where`` (``dataset``, ``method``, ``models`` as ``"a b"`` or a sequence, ``teacher``,
    ``label``, ``metric``), in the file's order."""
    unknown = sorted(set(where) - {"dataset", "method", "models", "teacher", "label", "metric"})
    if unknown:
        raise ValueError(f"unknown published.csv field {unknown[0]!r}")
    if isinstance(where.get("models"), str):
        where["models"] = tuple(where["models"].split())
    elif "models" in where:
        where["models"] = tuple(where["models"])
    return [
        row
        for row in PUBLISHED
        if (source is None or row["source"] == source)
        and all(row[key] == value for key, value in where.items())
    ]


def quote(source: str, sep: str = " / ", **where: Any) -> str:
    """The one published row matching ``source`` and ``where`` (see :func:`lookup`), its numbers
    as the source prints them, one per network: ``quote("TADML Table 5", method="dml",
    models="resnet32 resnet32")`` is ``"71.86 / 71.89"``. ValueError unless exactly one row
    matches."""
    rows = lookup(source, **where)
    if len(rows) != 1:
        criteria = ", ".join(f"{k}={v!r}" for k, v in where.items())
        raise ValueError(
            f"{len(rows)} rows of {TABLE.name} from {source!r} match {criteria or 'nothing more'}: "
            "name the row by its dataset, method, models or label"
        )
    return sep.join(rows[0]["printed"])
