"""The command line: ``python -m kdlab train|reproduce|bench …``.

Every bad argument ends in a one-line error on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import load_network
from .data import DATASETS, DatasetNotFoundError
from .messages import speaking
from .methods import METHODS, get_method, parse_value
from .profiles import profile
from .runfolder import claim
from .train import pick_device


class UsageError(Exception):
    """A bad command-line argument: reported on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + error
        raise UsageError(message)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one method once and write its run folder")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(sorted(METHODS))}")
    p.add_argument("--models", required=True, help="comma-separated architectures, one per network")
    p.add_argument("--teacher", help="the teacher's architecture (methods with a teacher)")
    p.add_argument("--teacher-checkpoint",
                   help="a trained teacher saved by kdlab (networks/<name>.pt of a run folder)")  # fmt: skip
    p.add_argument("--teacher-epochs", type=int, help="epochs to train the teacher first (kd)")
    p.add_argument("--dataset", help=f"one of: {', '.join(DATASETS)} (default: the profile's)")
    p.add_argument("--data-root", help="the dataset cache folder (default: the checkout's data/)")
    p.add_argument("--train-size", type=int, help="a fixed class-balanced training subset")
    p.add_argument("--profile", help="smoke, lab or paper (default: $KDLAB_PROFILE or lab)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", choices=["step", "cosine", "constant"])
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="default: the profile's")
    p.add_argument("--label-smoothing", type=float, help="ε of the cross-entropy (default: 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--out", required=True, help="the run folder (a new or empty one, unless "
                   "--resume or --overwrite)")  # fmt: skip
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in OUT from its last finished epoch")  # fmt: skip
    again.add_argument("--overwrite", action="store_true",
                       help="delete the run in OUT and start afresh")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method parameter, e.g. --set temperature=2 (repeatable)",
    )


def _method_params(method: str, assignments: Sequence[str]) -> dict:
    method_cls = get_method(method)
    params = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        params[key.strip()] = parse_value(method_cls, key.strip(), text.strip())
    return params


def cmd_train(args: argparse.Namespace) -> int:
    from .reproduce import train_one

    method_cls = get_method(args.method)
    params = _method_params(args.method, args.set)
    prof = profile(
        args.profile,
        task=None if args.dataset else method_cls.tasks[0],  # else the data set's task
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        train_size=args.train_size,
        optimizer=args.optimizer,
        label_smoothing=args.label_smoothing,
    )
    if method_cls.teacher_mode is None and (args.teacher or args.teacher_checkpoint):
        raise UsageError(f"method {args.method!r} has no teacher; drop --teacher")
    if method_cls.teacher_mode is not None and not (args.teacher or args.teacher_checkpoint):
        raise UsageError(
            f"method {args.method!r} needs --teacher ARCH or --teacher-checkpoint PATH"
        )
    if args.teacher and args.teacher_checkpoint:
        raise UsageError("give --teacher ARCH or --teacher-checkpoint PATH, not both")
    pick_device(args.device)  # a bad or missing device fails before anything loads
    out = Path(args.out)
    claim(out, args.resume, args.overwrite, dry_run=True)  # refused before anything loads
    teacher = Path(args.teacher_checkpoint) if args.teacher_checkpoint else args.teacher
    if isinstance(teacher, Path):
        load_network(teacher)  # not a network checkpoint: said before anything trains
    prof, dataset = prof.load(args.data_root)
    config = prof.train_config(seed=args.seed, device=args.device, precision=args.precision)
    try:
        result = train_one(
            args.method,
            [m.strip() for m in args.models.split(",")],
            dataset,
            config=config,
            teacher=teacher,
            out=out,
            resume=args.resume,
            overwrite=args.overwrite,
            teacher_epochs=args.teacher_epochs,
            progress=not args.no_progress,
            **params,
        )
    except KeyboardInterrupt:
        print(f"kdlab: interrupted; {out} keeps every finished epoch: the same command with "
              "--resume continues it", file=sys.stderr)  # fmt: skip
        return 130
    metric = result.summary["metric"]
    print(f"test {metric} (%), last epoch and best:")
    for name, entry in result.summary["networks"].items():
        print(
            f"{name:>10}: final {entry[f'final_{metric}']:.2f} %, "
            f"best {entry[f'best_{metric}']:.2f} % (epoch {entry['best_epoch']})"
        )
    print(f"wrote {out}/config.json, metrics.jsonl, summary.json")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="execute every notebook headless and summarise the accuracies")
    p.add_argument("--out", default="runs/demo", help="where the executed notebooks go")
    p.add_argument("--profile", help="smoke, lab or paper (default: $KDLAB_PROFILE or lab)")
    p.add_argument(
        "--notebooks", help="comma-separated notebook numbers, e.g. 00,01 (default: all)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar over the cells")


def _demo_grid(profile_name: str, out: Path) -> bool:
    """The grid that ends the demo: every method on digits (the smoke grid in the smoke profile)."""
    from .reproduce import run_grid

    grid = "smoke" if profile_name == "smoke" else "digits"
    print(f"running the {grid} grid → {out}", file=sys.stderr, flush=True)
    outcomes = run_grid(grid, out)
    return all(o["status"] in ("ok", "skipped") for o in outcomes)


def _demo_rows(notebook: Path, runs: Path) -> list[dict]:
    """One row per network of every run a notebook wrote under ``runs``."""
    import json

    rows = []
    for summary_file in sorted(runs.glob("**/summary.json")):
        summary = json.loads(summary_file.read_text())
        metric = summary.get("metric", "acc")
        for network, entry in summary["networks"].items():
            rows.append({
                "notebook": notebook.stem, "run": str(summary_file.parent.relative_to(runs)),
                "network": f"{network} ({entry.get('arch', 'mean softmax')})",
                "metric": metric, "final": f"{entry[f'final_{metric}']:.2f}",
                "best (epoch)": f"{entry[f'best_{metric}']:.2f} ({entry['best_epoch']})",
                "seconds": f"{summary['seconds']:.0f}",
            })  # fmt: skip
    return rows


def _demo_notebooks(chosen: list[str] | None) -> list[Path]:
    from .nbtools import repository_root

    notebooks = [
        nb
        for nb in sorted((repository_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
        if chosen is None or nb.name[:2] in chosen
    ]
    if not notebooks:
        raise UsageError("no notebooks to run")
    return notebooks


def cmd_demo(args: argparse.Namespace) -> int:
    """papermill every notebook with ``out_dir`` set, run the digits grid (before the notebook
    that reads a grid's results), then write ``OUT/summary.md`` and print both tables. On
    stderr: which notebook runs (k of n), papermill's progress bar over its cells, and the
    seconds it took."""
    import os
    import time

    import papermill

    from .nbtools import execute
    from .reproduce import markdown_table, write_table

    name = profile(args.profile).name
    os.environ["KDLAB_PROFILE"] = name
    out = Path(args.out).resolve()
    chosen = args.notebooks.split(",") if args.notebooks else None
    rows, failed, timings = [], [], []
    grid_out, grid_ok = out / "grid", None
    notebooks = _demo_notebooks(chosen)
    for number, nb in enumerate(notebooks, 1):
        runs = out / nb.stem
        declared = papermill.inspect_notebook(str(nb))
        given = {"PROFILE": name, "out_dir": str(runs)}
        if "results_dir" in declared:
            if grid_ok is None:
                grid_ok = _demo_grid(name, grid_out)
            given["results_dir"] = str(grid_out)
        started = time.perf_counter()
        print(f"[{number}/{len(notebooks)}] running {nb.name} …", file=sys.stderr, flush=True)
        try:
            execute(nb, out / nb.name, {k: v for k, v in given.items() if k in declared},
                    progress=not args.no_progress)  # fmt: skip
        except Exception as error:  # keep going: report every notebook
            failed.append(nb.name)
            first = str(error).splitlines()[0]
            print(f"{nb.name} failed: {first}; see {out / nb.name}", file=sys.stderr)
            continue
        elapsed = time.perf_counter() - started
        timings.append({"notebook": nb.name, "seconds": f"{elapsed:.0f}"})
        print(f"{nb.name}: {elapsed:.0f} s", file=sys.stderr)
        rows += _demo_rows(nb, runs)
    if grid_ok is None and chosen is None:
        grid_ok = _demo_grid(name, grid_out)
    preamble = (
        f"# kdlab demo (profile {name})\n\n"
        "Test accuracy (%) of every run of every notebook: last epoch, and best (its epoch)."
    )
    write_table(out / "summary.md", rows, preamble=preamble, epilogue=markdown_table(timings))
    print((out / "summary.md").read_text())
    if (grid_out / "results.md").exists():
        print("\n" + (grid_out / "results.md").read_text())
    grid_note = f", and the grid in {grid_out}" if (grid_out / "results.md").exists() else ""
    print(f"\nwrote {out / 'summary.md'} and the executed notebooks{grid_note}")
    return 1 if failed or grid_ok is False else 0


# Further commands live in their own modules, each with add_arguments(parser) and main(args).
_COMMANDS = {
    "reproduce": ("kdlab.reproduce", "run a grid of trainings and aggregate a results table"),
    "bench": ("kdlab.bench", "measure training speed against the common training loop"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m kdlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_demo(sub)
    for name, (module_name, help_text) in _COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.add_arguments(sub.add_parser(name, help=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its messages name command-line flags (:mod:`kdlab.messages`)."""
    parser = build_parser()
    try:
        with speaking("cli"):
            args = parser.parse_args(argv)
            if args.command == "train":
                return cmd_train(args)
            if args.command == "demo":
                return cmd_demo(args)
            module = importlib.import_module(_COMMANDS[args.command][0])
            return module.main(args)
    except (UsageError, ValueError, DatasetNotFoundError, FileNotFoundError) as error:
        print(f"kdlab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
