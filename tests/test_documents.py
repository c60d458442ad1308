"""What the documents say agrees with the code: the methods reference and its citations, the one
table of published numbers, and the facts the README and notebook 00 state (the notebooks, the
networks' sizes, the methods a grid covers, the dependencies), each derived from the code."""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import json
import re
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

import kdlab
from kdlab.methods import METHODS
from kdlab.reproduce import published

ROOT = Path(__file__).resolve().parents[1]
METHODS_MD = ROOT / "kdlab" / "METHODS.md"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _cells(path: Path, kind: str | None = None) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if kind is None or c["cell_type"] == kind]


def _texts() -> dict[str, str]:
    """Every text of the repository that may cite the methods reference, by path."""
    texts = {"README.md": README}
    for pattern in ("kdlab/**/*.py", "kdlab/**/*.yaml", "kdlab/**/*.csv", "tests/*.py"):
        for path in ROOT.glob(pattern):
            if path.name == Path(__file__).name:
                continue  # this file's examples cite missing sections on purpose
            texts[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        texts[str(path.relative_to(ROOT))] = "\n".join(_cells(path))
    return texts


# --------------------------------------------------------------------------- the reference


def sections(text: str) -> tuple[set[int], set[str]]:
    """The numbered sections (``## 3. …``) and the named ones (``## Metrics``) of a reference."""
    numbered = {int(m) for m in re.findall(r"^## (\d+)\. ", text, re.MULTILINE)}
    named = {m.strip() for m in re.findall(r"^## ([^\d].*)$", text, re.MULTILINE)}
    return numbered, named


CITATION = re.compile(
    r"(?P<path>[\w/]*)METHODS\.md"
    r"(?:,?\s*§\s*(?:(?P<first>\d+)(?:\s*[–-]\s*(?P<last>\d+))?|(?P<any>N)\b)"
    r"|,\s*\"(?P<name>[^\"\n]+)\")?"
)


def bad_citations(texts: dict[str, str], reference: str) -> list[str]:
    """Citations of METHODS.md that name no section of ``reference``, or no section at all
    without saying which file (``kdlab/METHODS.md``) they mean."""
    numbered, named = sections(reference)
    bad = []
    for where, text in texts.items():
        for m in CITATION.finditer(text):
            if m["first"]:
                wanted = range(int(m["first"]), int(m["last"] or m["first"]) + 1)
                missing = [n for n in wanted if n not in numbered]
                if missing:
                    bad.append(f"{where}: {m[0]!r} (no §{missing[0]})")
            elif m["name"]:
                if m["name"] not in named:
                    bad.append(f"{where}: {m[0]!r} (no section {m['name']!r})")
            elif m["path"] != "kdlab/" and not m["any"]:  # "METHODS.md §N" describes the form
                bad.append(f"{where}: {m[0]!r} names neither a section nor kdlab/METHODS.md")
    return bad


def test_the_methods_reference_has_the_shared_numbering():
    numbered, named = sections(METHODS_MD.read_text(encoding="utf-8"))
    assert numbered == set(range(1, 13))
    assert {"Notation", "Metrics"} <= named


def test_every_citation_of_the_methods_reference_names_a_section_that_exists():
    reference = METHODS_MD.read_text(encoding="utf-8")
    assert bad_citations(_texts(), reference) == []
    # The check can fail: a reference without §5 leaves the TADML citations dangling.
    without_5 = re.sub(r"^## 5\. ", "## Five. ", reference, flags=re.MULTILINE)
    assert any("no §5" in b for b in bad_citations(_texts(), without_5))
    assert bad_citations({"x": 'see METHODS.md, "Nothing"'}, reference)
    assert bad_citations({"x": "see METHODS.md for the formula"}, reference)
    assert not bad_citations({"x": "see kdlab/METHODS.md §4–5"}, reference)


def test_the_readme_says_which_file_methods_md_is():
    assert "kdlab/METHODS.md" in README
    assert re.search(r"METHODS\.md §N[^.]*kdlab/METHODS\.md", README, re.DOTALL)


def test_the_methods_reference_ships_with_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["kdlab"]
    assert any(fnmatch.fnmatch("METHODS.md", p) for p in patterns)
    assert any(fnmatch.fnmatch("reproduce/published.csv", p) for p in patterns)


# --------------------------------------------------------------------------- published numbers

NUMBER = re.compile(r"(?<![\w.])\d{2,3}\.\d{1,2}(?![\d])")  # 37.0, 71.86, 100.00
TWO_DECIMALS = re.compile(r"(?<![\w.])\d{2}\.\d{2}(?![\d])")  # how the tables print accuracies


def _csv_values() -> set[str]:
    with open(published.TABLE, newline="", encoding="utf-8") as f:
        return {v for row in csv.DictReader(f) for v in row["acc"].split()}


def test_the_reference_and_the_table_quote_the_same_numbers():
    # Every number of published.csv is quoted in kdlab/METHODS.md and every two-decimal number
    # there is in the table: one place for the numbers, one text that explains them.
    reference = METHODS_MD.read_text(encoding="utf-8")
    in_text = set(NUMBER.findall(reference))
    values = _csv_values()
    assert sorted(values - in_text) == []
    assert sorted(n for n in TWO_DECIMALS.findall(reference) if n not in values) == []


def test_every_published_row_has_a_source_and_a_protocol():
    for row in published.PUBLISHED:
        assert row["source"] and row["protocol"] and row["acc"], row
        assert not row["pair"] or len(row["acc"]) == len(row["models"]), row


def typed_numbers(path: Path) -> list[str]:
    """Published-looking numbers a notebook types: any two-decimal number in a code cell (read
    them from published.csv instead), and those of its text absent from published.csv."""
    values = _csv_values()
    code = [n for cell in _cells(path, "code") for n in TWO_DECIMALS.findall(cell)]
    text = [n for cell in _cells(path, "markdown") for n in TWO_DECIMALS.findall(cell)]
    return [f"code: {n}" for n in code] + [f"text: {n}" for n in text if n not in values]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_notebook_types_a_published_number(path):
    assert typed_numbers(path) == []


def test_typed_numbers_are_found(tmp_path):
    notebook = {
        "cells": [
            {"cell_type": "code", "source": ['published = {"KD": "73.33"}']},
            {"cell_type": "markdown", "source": ["DML gains 11.50 on 70.47 (Table 5), T = 20.0"]},
        ]
    }
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps(notebook))
    assert typed_numbers(path) == ["code: 73.33", "text: 11.50"]


def test_quote_reads_one_row_as_printed():
    assert published.quote("TADML Table 5", method="dml", models="resnet32 resnet32") == (
        "71.86 / 71.89"
    )
    assert published.quote("TADML Table 7", dataset="cifar100", method="adml") == "69.60"
    with pytest.raises(ValueError, match="2 rows .* match label='LS'"):
        published.quote("TADML Table 1", label="LS")
    with pytest.raises(ValueError, match="unknown published.csv field"):
        published.lookup("TADML Table 1", network="x")


# --------------------------------------------------------------------------- facts


def test_notebook_00_and_the_readme_list_every_notebook():
    table_00 = _cells(NOTEBOOKS[0], "markdown")[0]
    listed_00 = set(re.findall(r"^\| (\d\d) · ", table_00, re.MULTILINE))
    listed_readme = set(re.findall(r"^\| `(\d\d_\w+)` \|", README, re.MULTILINE))
    assert listed_00 == {p.name[:2] for p in NOTEBOOKS}
    assert listed_readme == {p.stem for p in NOTEBOOKS}


PARAMETERS = re.compile(r"\b(\d[\d,]*(?:\.\d+)?)\s?([kM]?) parameters")


def parameter_claims(text: str) -> list[tuple[str, int, int]]:
    """``(architecture, claimed, counted)`` for every "N parameters" said of an architecture of
    the registry (the last one named in the 60 characters before it), where the number is not
    the network's (counted for digits: 10 classes, one channel; a detector for one polyp
    class and RGB images)."""
    wrong = []
    for m in PARAMETERS.finditer(text):
        before = re.findall(r"\w+", text[max(0, m.start() - 60) : m.start()])
        names = [n for n in before if n in kdlab.available_models()]
        if not names:
            continue
        name = names[-1]
        # detectors are counted for one polyp class (num_classes=2 with the background), RGB
        detector = kdlab.models.model_kind(name) == "detector"
        net = kdlab.build_model(name, 2) if detector else kdlab.build_model(name, 10, 1)
        counted = sum(p.numel() for p in net.parameters() if p.requires_grad)
        number, unit = m.group(1), m.group(2)
        scale = {"": 1, "k": 1e3, "M": 1e6}[unit]
        claimed = float(number.replace(",", "")) * scale
        # "6.3 k" claims 6,250–6,349; "6,274" claims exactly that.
        decimals = len(number.partition(".")[2])
        half = 0.5 * scale * 10**-decimals if unit else 0.5
        if abs(claimed - counted) > half:
            wrong.append((names[-1], round(claimed), counted))
    return wrong


def test_parameter_counts_in_the_documents_are_the_networks():
    texts = [README] + ["\n".join(_cells(p, "markdown")) for p in NOTEBOOKS]
    assert [c for text in texts for c in parameter_claims(text)] == []
    assert parameter_claims("a student (`cnn_tiny`, 6.4 k parameters)") == [
        ("cnn_tiny", 6400, 6274)
    ]
    assert parameter_claims("`cnn_tiny` with 6,274 parameters") == []


# Methods the digits grid cannot run, with the reason (none so far).
NOT_ON_DIGITS: dict[str, str] = {}


def _grid(name: str) -> dict:
    return yaml.safe_load((ROOT / "kdlab" / "grids" / f"{name}.yaml").read_text(encoding="utf-8"))


def test_the_digits_grid_covers_every_method():
    covered = {e["method"] for e in _grid("digits")["experiments"]}
    # every method that trains classification (detection's have their own grid, niyaz_polyp)
    classifying = {name for name, method in METHODS.items() if "classification" in method.tasks}
    assert sorted(classifying - covered - set(NOT_ON_DIGITS)) == []
    assert "`reproduce digits`" not in README or "every method" in README


# Weights of terms a method's defaults switch off: a table need not show them.
INERT = {
    "kdml": ("lam_back",),  # only with teacher_learns_from_students
    "fitnet": ("alpha", "temperature"),  # KD's, in the second of two stages (stages=2)
}


def _stated_knobs(method: str) -> list[str]:
    """A method's loss weights and temperatures (its float parameters, learning rates and
    terms switched off by default aside): what a results table must show."""
    fields = dataclasses.fields(METHODS[method].Params)
    return [
        f.name
        for f in fields
        if f.type in ("float", float)
        and not f.name.endswith("_lr")
        and f.name not in INERT.get(method, ())
    ]


def test_the_digits_grid_states_every_weight_and_temperature():
    for experiment in _grid("digits")["experiments"]:
        missing = set(_stated_knobs(experiment["method"])) - set(experiment.get("params", {}))
        assert not missing, f"digits grid, {experiment['method']}: state {sorted(missing)}"


def _listed(sentence: str) -> set[str]:
    """Package names of a parenthesised list such as ``(torch, ipywidgets ≥ 7.7, pyyaml)``."""
    return {re.split(r"[\s≥<>=]", item.strip())[0].lower() for item in sentence.split(",")}


def test_the_readme_lists_the_core_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = {re.match(r"[\w.-]+", r)[0].lower() for r in project["dependencies"]}
    everything = re.search(r"core dependencies are only [^(]*\(([^)]*)\)", README)
    assert everything and _listed(everything[1]) == core
    pinned = (ROOT / "tests" / "colab-constraints-2026-08.txt").read_text(encoding="utf-8")
    held = {re.match(r"[\w.-]+", line)[0].lower() for line in pinned.splitlines() if "==" in line}
    others = re.search(r"other core requirements \(([^)]*)\)", README)
    lacking = re.search(r"those it may lack \(([^)]*)\)", README)
    assert (
        others and _listed(others[1]) | (_listed(lacking[1]) if lacking else set()) == core - held
    )


def test_the_readme_troubleshoots_empty_widgets_in_classic_notebook():
    section = README.partition("## Troubleshooting")[2]
    assert section, "no Troubleshooting section"
    for needed in ("widgetsnbextension 3.6.10", "3.6.1", "Notebook 6.5", "ipywidgets 7.7"):
        assert needed in section, needed
    assert 'pip install "widgetsnbextension==3.6.1"' in section
    assert "JupyterLab" in section and "Colab" in section and "restart" in section


def test_a_run_folder_records_its_training_set_size(digits, fast_config, tmp_path):
    config = dataclasses.replace(fast_config, epochs=1)
    kdlab.run("independent", ["cnn_tiny"], digits, config=config, out=tmp_path, progress=False)
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["train_size"] == len(digits.train_labels) == 200
