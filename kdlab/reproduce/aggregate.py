"""Aggregating a grid's finished cells (pandas), and the one function that writes a table.

``OUT/runs.csv``: one row per cell and network (a seed's run). ``OUT/results.csv`` and
``OUT/results.md``: one row per cell group (the cell without its seed) and network: final
(last epoch) and best headline metric of the data set's task (``metric``: top-1 accuracy,
mAP…), mean ± sample standard deviation over the seeds with n, the best epoch, and the
published number where the grid matches a published row. The task's other metrics (e.g. AUROC
and balanced accuracy, ``final_auroc`` in a summary) get columns of their own: ``final_<m>`` in
``runs.csv``, ``<m>_mean`` and ``<m>_std`` (last epoch) in ``results.csv`` and ``results.md``
(retrieval: CMC ``rank1``, ``rank5``, ``rank10`` beside the headline mAP), in the task's order.
A grid's ``not_reproduced`` rows close ``results.md``, each with its reason. The compute of a
run's summary (:mod:`kdlab.cost`) gets four columns: ``net_params`` and ``net_macs`` (per image)
of the network, ``train_params`` and ``train_macs`` of everything the method trains and forwards
in a step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import write_text
from .grid import short
from .published import published_for

COST_COLUMNS = ["net_params", "net_macs", "train_params", "train_macs"]
RESULT_COLUMNS = [
    "label", "method", "models", "teacher", "dataset", "params", "settings", "profile",
    "network", "arch", "metric", "n", "seeds", "final_mean", "final_std", "best_mean", "best_std",
    "best_epoch_mean", "epochs", "agree_mean", "published", "published_sources",
    *COST_COLUMNS,
]  # fmt: skip
RUN_COLUMNS = [
    "label", "group", "method", "models", "dataset", "seed", "network", "arch", "metric", "final",
    "best", "best_epoch", "epochs", "agree", "run", "executed", *COST_COLUMNS,
]  # fmt: skip
EXPLANATION = (
    "{what}. **final**: the last epoch; **best**: the best epoch, chosen on the "
    "test split itself (an optimistic number). Mean ± sample standard deviation over the n "
    "seeds (± 0.00 with one seed is no estimate of the noise). **published**: the papers' "
    "numbers for the same method, networks and dataset (METHODS.md; their protocol, not "
    "measured here). **params · MACs**: the network's parameters and multiply-accumulates per "
    "image (millions), then those of everything the method trains and forwards in a step."
)


def _what(metrics) -> str:
    """What the final and best columns hold: the label of each headline metric in the table."""
    from ..tasks import TASKS

    labels = {cls.metric: cls.metric_label for cls in TASKS.values()}
    found = [f"Test {labels.get(m, m)}" for m in dict.fromkeys(metrics)]
    return "; ".join(found) or "Test top-1 accuracy (%)"


def markdown_table(frame) -> str:
    """``frame`` (a pandas DataFrame, or a list of dicts) as a markdown table; None/NaN as ``–``."""
    import pandas as pd

    frame = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
    cells = frame.astype(object).where(frame.notna(), "–")
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in cells.itertuples(False)]
    if frame.empty:
        lines.append("| (none yet) |" + " |" * (len(frame.columns) - 1))
    return "\n".join(lines)


def write_table(path: str | Path, frame, *, preamble: str = "", epilogue: str = "") -> Path:
    """Write ``frame`` (a pandas DataFrame, or a list of dicts) atomically: as CSV for a
    ``.csv`` path (None/NaN as an empty field), else as a :func:`markdown_table` between
    ``preamble`` and ``epilogue``. Every table of kdlab's commands is written here."""
    import pandas as pd

    frame = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
    path = Path(path)
    if path.suffix == ".csv":
        return write_text(path, frame.to_csv(index=False))
    parts = [preamble.strip(), markdown_table(frame), epilogue.strip()]
    return write_text(path, "\n\n".join(p for p in parts if p) + "\n")


def _records(out: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*/cell.json")]
    return sorted(records, key=lambda r: (r.get("index", 0), r["name"]))


def _run_rows(out: Path, record: Mapping) -> list[dict]:
    spec = record["spec"]
    summary = json.loads((out / record["run"] / "summary.json").read_text())
    agreement = [v for k, v in summary.get("agreement", {}).items() if k.startswith("agree/")]
    agree = sum(agreement) / len(agreement) if agreement else None
    metric = summary.get("metric", "acc")
    cost = summary.get("cost") or {}
    return [
        {**_other_metrics(entry, metric),
         "label": record["label"], "group": record["group"], "method": spec["method"],
         "models": "+".join(spec["models"]), "dataset": summary.get("dataset"),
         "seed": spec["seed"], "network": network, "arch": entry.get("arch", ""),
         "metric": metric, "final": entry[f"final_{metric}"], "best": entry[f"best_{metric}"],
         "best_epoch": entry["best_epoch"], "epochs": summary["epochs"], "agree": agree,
         "run": record["run"], "executed": record.get("executed") or "",
         **_cost_row(cost, network)}
        for network, entry in summary["networks"].items()
    ]  # fmt: skip


def _cost_row(cost: dict, network: str) -> dict:
    """The cost columns of one network's row (None where the summary has no cost)."""
    own = (cost.get("networks") or {}).get(network, {})
    return {"net_params": own.get("params"), "net_macs": own.get("macs"),
            "train_params": cost.get("params"), "train_macs": cost.get("macs")}  # fmt: skip


def _other_metrics(entry: Mapping, metric: str) -> dict[str, float]:
    """A summary entry's last values of the task's other metrics: ``{"final_auroc": …}``."""
    return {k: v for k, v in entry.items() if k.startswith("final_") and k != f"final_{metric}"}


def _extra_columns(frame) -> list[str]:
    """The other metrics' names found in ``runs``: ``final_auroc`` → ``auroc``."""
    return [c[len("final_") :] for c in frame.columns if c.startswith("final_")]


def _results(runs, specs: Mapping[str, Mapping]):
    """One row per (group, network): the seeds' statistics and the published numbers."""
    import pandas as pd

    if runs.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    stats = runs.groupby(["group", "network"], sort=False).agg(
        label=("label", "first"), dataset=("dataset", "first"), arch=("arch", "first"),
        metric=("metric", "first"), n=("final", "size"),
        seeds=("seed", lambda s: " ".join(map(str, s))),
        final_mean=("final", "mean"), final_std=("final", "std"),
        best_mean=("best", "mean"), best_std=("best", "std"),
        best_epoch_mean=("best_epoch", "mean"), epochs=("epochs", "first"),
        agree_mean=("agree", "mean"),
        **{column: (column, "first") for column in COST_COLUMNS},
        **{f"{m}_{how}": (f"final_{m}", how) for m in _extra_columns(runs) for how in ("mean", "std")},
    ).reset_index()  # fmt: skip
    stats[["final_std", "best_std"]] = stats[["final_std", "best_std"]].fillna(0.0)  # n = 1
    for m in _extra_columns(runs):  # n = 1 gives no std; a network without the metric stays NaN
        stats[f"{m}_std"] = stats[f"{m}_std"].where(
            stats[f"{m}_mean"].isna() | (stats["n"] > 1), 0.0
        )
    rows = []
    for row in stats.to_dict("records"):
        spec = specs[row["group"]]
        published = _published_for_network(
            spec, row["dataset"], row["network"], row["arch"], row["metric"]
        )
        rows.append({
            **row, "method": spec["method"], "models": "+".join(spec["models"]),
            "teacher": spec["teacher"] or "",
            "params": json.dumps(spec["params"], sort_keys=True) if spec["params"] else "",
            "settings": json.dumps(spec["settings"], sort_keys=True) if spec["settings"] else "",
            "profile": spec["profile"], "published": published[0][0] if published else None,
            "published_sources": "; ".join(f"{acc:.2f} ({src})" for acc, src in published),
        })  # fmt: skip
    extra = [f"{m}_{how}" for m in _extra_columns(runs) for how in ("mean", "std")]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS + extra)


def aggregate(out: str | Path):
    """Write ``results.csv``, ``runs.csv`` and ``results.md`` in ``out`` from its finished cells;
    returns ``(results, runs)`` as pandas DataFrames."""
    import pandas as pd

    out = Path(out)
    records = _records(out)
    finished = [r for r in records if r.get("status") == "ok"]
    rows = [row for r in finished for row in _run_rows(out, r)]
    extra = list(dict.fromkeys(k for row in rows for k in row if k.startswith("final_")))
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS + extra)
    results = _results(runs, {r["group"]: r["spec"] for r in finished})
    write_table(out / "results.csv", results)
    write_table(out / "runs.csv", runs)
    _write_markdown(out, results, [r for r in records if r.get("status") != "ok"])
    return results, runs


def _published_for_network(
    spec: Mapping, dataset: str | None, network: str, arch: str, metric: str = "acc"
):
    if network == "ensemble":
        return []
    if network == "teacher":  # the teacher trained alone
        return published_for(dataset, "independent", [arch], metric=metric)[0] if arch else []
    names = [n for n in ("net", "peer", "student") if network.startswith(n)]
    digits = network[len(names[0]) :] if names else ""
    position = int(digits) - 1 if digits.isdigit() else 0
    found = published_for(
        dataset, spec["method"], list(spec["models"]), spec["teacher"], metric=metric
    )
    return found[position] if position < len(found) else []


def _other_names(results) -> list[str]:
    """The other metrics of a results table: ``auroc`` for its ``auroc_mean`` column."""
    extra = results.columns[len(RESULT_COLUMNS) :]
    return [c[: -len("_mean")] for c in extra if c.endswith("_mean")]


def _markdown_rows(results) -> list[dict[str, Any]]:
    others = _other_names(results)
    rows = []
    for r in results.to_dict("records"):
        params = ", ".join(f"{k}={short(v)}" for k, v in json.loads(r["params"] or "{}").items())
        rows.append({
            "method": r["method"],
            "networks": r["models"] + (f" ← {r['teacher']}" if r["teacher"] else ""),
            "dataset": r["dataset"], "parameters": params,
            "network": f"{r['network']} ({r['arch']})" if r["arch"] else r["network"],
            "n": r["n"], "final": f"{r['final_mean']:.2f} ± {r['final_std']:.2f}",
            "best": f"{r['best_mean']:.2f} ± {r['best_std']:.2f}",
            "best epoch": f"{r['best_epoch_mean']:.1f} of {r['epochs']}",
            "published": r["published_sources"] or "–",
            "params · MACs (M)": _millions(r),
            **{f"final {m}": _mean_std(r, m) for m in others},
        })  # fmt: skip
    return rows


def _millions(r) -> str:
    """``network params · MACs / all params · MACs`` in millions, or – without a cost."""
    values = [r.get(c) for c in COST_COLUMNS]
    if any(v is None or v != v for v in values):  # None, or NaN read back from a CSV
        return "–"
    own, train = values[:2], values[2:]
    return " / ".join(" · ".join(f"{v / 1e6:.2f}" for v in pair) for pair in (own, train))


def _mean_std(row: Mapping, metric: str) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if mean != mean:  # NaN: a network without this metric
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if metric == "auroc" else f"{mean:.2f} ± {std:.2f}"


def _write_markdown(out: Path, results, unfinished: Sequence[Mapping]) -> None:
    import pandas as pd

    info = json.loads((out / "grid.json").read_text()) if (out / "grid.json").exists() else {}
    preamble = [f"# Results: grid {info.get('name', out.name)}", ""]
    if info.get("description"):
        preamble += [info["description"].strip(), ""]
    preamble.append(EXPLANATION.format(what=_what(results["metric"])))
    columns = ["method", "networks", "dataset", "parameters", "network", "n", "final", "best",
               "best epoch", "published", "params · MACs (M)"]  # fmt: skip
    columns += [f"final {m}" for m in _other_names(results)]
    epilogue = []
    if unfinished:
        epilogue += ["## Cells not finished", ""]
        for record in unfinished:
            where = (
                f" — executed notebook: `{record['executed']}`" if record.get("executed") else ""
            )
            what = record.get("error") or record.get("status")
            epilogue.append(f"- `{record['name']}`: {what}{where}")
    if info.get("not_reproduced"):
        epilogue += ["## Not reproduced", ""]
        epilogue += [f"- **{row}**: {why}" for row, why in info["not_reproduced"].items()]
        epilogue.append("")
    frame = pd.DataFrame(_markdown_rows(results), columns=columns)
    write_table(out / "results.md", frame, preamble="\n".join(preamble),
                epilogue="\n".join(epilogue))  # fmt: skip


def load_results(out: str | Path):
    """``(results, runs, curves)`` of a grid's output folder as pandas DataFrames; ``curves``
    has one row per cell, seed and epoch with every metric of ``metrics.jsonl``."""
    import pandas as pd

    out = Path(out)
    if not (out / "results.csv").exists():
        raise FileNotFoundError(f"no results.csv in {out}: run a grid into it first")
    results = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False, na_values=[""])
    frames = []
    for (label, seed, run), _ in runs.groupby(["label", "seed", "run"], sort=False):
        frame = pd.read_json(out / run / "metrics.jsonl", lines=True)
        frame.insert(0, "label", label)
        frame.insert(1, "seed", seed)
        frames.append(frame)
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return results, runs, curves
