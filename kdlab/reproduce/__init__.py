"""Reproductions: run a grid of trainings and aggregate a results table.

``python -m kdlab reproduce GRID --out runs/NAME [--executor local|gpus|slurm]`` (GRID: a YAML
file, or the name of a grid shipped in ``kdlab/grids/``: ``smoke``, ``digits``,
``tadml_table5_cifar100``, ``tadml_table7``, ``tadml_table7_smoke``, ``niyaz_msi``,
``niyaz_msi_smoke``, ``tadml_table6_market1501``, ``tadml_table6_smoke``,
``online_family_cifar100``, ``online_family_digits``, ``online_family_smoke``).

A grid is a list of experiments; every experiment expands into cells, one per dataset ×
network combination × parameter combination × seed, and each cell is one training. The
package, one job per module:

- :mod:`~kdlab.reproduce.grid`: the grid's schema and its validation (one-line errors).
- :mod:`~kdlab.reproduce.published`: the papers' numbers, as data (``published.csv``).
- :mod:`~kdlab.reproduce.contract`: the notebook contract, the runner notebook, and
  :func:`train_one`, the one place that trains a pretrained teacher first.
- :mod:`~kdlab.reproduce.execute`: the cells' records and the three executors.
- :mod:`~kdlab.reproduce.aggregate`: the tables (pandas), all written by :func:`write_table`.
- :mod:`~kdlab.reproduce.command`: the command line.
"""

from __future__ import annotations

from .aggregate import aggregate, load_results, markdown_table, write_table
from .command import add_arguments, main
from .contract import (
    CONTRACT,
    METHOD_NOTEBOOKS,
    cell_parameters,
    find_run,
    notebook_run,
    runner_notebook,
    train_one,
)
from .execute import EXECUTORS, plan, run_cell, run_grid
from .grid import RUNNER, SETTINGS, Cell, Grid, load_grid, shipped_grids
from .published import PUBLISHED, published_for

__all__ = [
    "CONTRACT", "EXECUTORS", "METHOD_NOTEBOOKS", "PUBLISHED", "RUNNER", "SETTINGS", "Cell",
    "Grid", "add_arguments", "aggregate", "cell_parameters", "find_run", "load_grid",
    "load_results", "main", "markdown_table", "notebook_run", "plan", "published_for", "run_cell", "run_grid",
    "runner_notebook", "shipped_grids", "train_one", "write_table",
]  # fmt: skip
