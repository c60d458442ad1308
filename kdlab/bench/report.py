"""The benchmark's report and its command line, ``python -m kdlab bench``."""

from __future__ import annotations

import argparse
import math
import platform
import sys
from collections.abc import Sequence
from typing import Any

import torch

from ..io import write_json
from .reference import EPOCH_IMAGES, ROWS
from .timing import Result, _cpus, run_benchmark


def environment(device: str = "auto") -> dict[str, Any]:
    """Where the numbers were measured."""
    from ..train import pick_device

    dev = pick_device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        name = f"{name}, {_cpus()} CPUs"
    return {
        "device": str(dev),
        "device_name": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def format_table(results: Sequence[Result], env: dict[str, Any], settings: dict[str, Any]) -> str:
    """A markdown table of the results with the device, torch version and settings above it."""
    lines = [
        f"device: {env['device']} ({env['device_name']}), torch {env['torch']}",
        "settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        "",
        "| row | networks | reference img/s | kdlab img/s | reference s/epoch | kdlab s/epoch "
        "| kdlab / reference |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.row} | {r.models} | skipped: {r.skipped} | | | | |")
            continue
        ratio = _fmt(r.ratio, ".2f")
        lines.append(
            f"| {r.row} | {r.models} | {_fmt(r.reference_img_s, '.1f')} "
            f"| {_fmt(r.kdlab_img_s, '.1f')} | {_fmt(r.reference_s_epoch, '.0f')} "
            f"| {_fmt(r.kdlab_s_epoch, '.0f')} | {ratio}× |"
        )
    compiled = [r for r in results if r.compile_s is not None]
    if compiled:
        lines.append("")
        lines += [
            f"compile time, {r.row}: {r.compile_s:.1f} s (not in the rates)" for r in compiled
        ]
    lines.append("")
    lines.append(
        f"img/s: training images per second (a batch counts once, however many networks learn "
        f"from it); s/epoch = {EPOCH_IMAGES:,} / img/s."
    )
    return "\n".join(lines)


def _bool_or_auto(text: str) -> str | bool:
    value = text.lower()
    if value == "auto":
        return "auto"
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected auto, on or off, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``python -m kdlab bench`` options."""
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated rows (default: {','.join(ROWS)})"
    )
    parser.add_argument(
        "--models", help="comma-separated architectures, one row set each (default: resnet32)"
    )
    parser.add_argument("--teacher", help="the kd row's teacher (default: the same architecture)")
    parser.add_argument("--batch-size", type=int, help="default 64 (DML's recipe); detection 8")
    parser.add_argument("--steps", type=int, help="timed steps per path and row (default 30)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3)")
    parser.add_argument("--rounds", type=int, help="alternating reference/kdlab blocks (default 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--workers", type=int, help="reference DataLoader workers (default: CPUs)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", type=_bool_or_auto, default="auto", help="auto|on|off")
    parser.add_argument("--threads", type=int, help="torch threads in kdlab's blocks")
    parser.add_argument("--compile", action="store_true", help="torch.compile kdlab's networks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="seconds: cnn_tiny, few steps")
    parser.add_argument("--json", help="also save the numbers to this file")
    parser.add_argument("--task", default="classification", choices=["classification", "detection"],
                        help="detection: one epoch of kdml_det on Kvasir-SEG's shape "
                        "(kdlab.bench.detection)")  # fmt: skip
    parser.add_argument("--size", type=int, default=320, help="detection: image side (320)")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "task", "classification") == "detection":
        from .detection import main as detection_main

        return detection_main(args)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    quick = args.quick
    models = args.models or ("cnn_tiny" if quick else "resnet32")
    settings = dict(
        batch_size=args.batch_size or 64,
        steps=args.steps or (3 if quick else 30),
        warmup=args.warmup or (1 if quick else 3),
        rounds=args.rounds or (1 if quick else 2),
        device=args.device,
        workers=args.workers if args.workers is not None else (min(2, _cpus()) if quick else None),
        train_images=2_048 if quick else EPOCH_IMAGES,
        precision=args.precision,
        channels_last=args.channels_last,
        threads=args.threads,
        compile=args.compile,
        seed=args.seed,
    )
    results = run_benchmark(
        rows,
        [m.strip() for m in models.split(",") if m.strip()],
        teacher=args.teacher,
        log=lambda message: print(message, file=sys.stderr, flush=True),
        **settings,
    )
    env = environment(args.device)
    shown = {k: v for k, v in settings.items() if k != "train_images"}
    shown["workers"] = shown["workers"] if shown["workers"] is not None else _cpus()
    if args.precision == "auto":  # say what "auto" chose on this device
        from ..train import pick_device, pick_precision, precision_name

        chosen = pick_precision("auto", pick_device(args.device))
        shown["precision"] = f"auto ({precision_name(chosen)})"
    print(format_table(results, env, shown))
    if args.json:
        data = {"environment": env, "settings": shown, "rows": [r.to_dict() for r in results]}
        write_json(args.json, data)
        print(f"wrote {args.json}")
    return 0
