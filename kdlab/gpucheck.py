"""A one-shot check of the kit's CUDA paths: ``python -m kdlab.gpucheck --out DIR``.

Written for a bare, offline GPU machine lent for a few minutes: it runs from a checkout with
``PYTHONPATH=.`` and no install (``make gpu-check``), importing only torch, torchvision, numpy
and what ``import kdlab`` needs (never ipywidgets, pyyaml or papermill), and it writes
``DIR/gpu-check.json`` and ``DIR/gpu-check.md``. Its sections, each reported even when another
fails:

1. **environment**: torch, CUDA, cuDNN, the device and its compute capability, what
   ``precision="auto"`` picks there.
2. **steps**: the training steps of a ResNet-20 on one fixed batch of synthetic CIFAR-shaped
   images through :func:`kdlab.run`, on the device in fp16 (autocast, the gradient scaler, fused
   SGD: a T4's path) and in bf16 (an A100's), against the same run on the CPU (same precision,
   fused SGD) and against the CPU in float32. Tolerance: the loss of every step within 2 % of
   both CPU runs' (:data:`LOSS_TOLERANCE`; on a CPU, fp16 stayed within 0.02 % of float32 and
   bf16 within 0.25 %, over 3 to 5 steps), and the weights after the steps within 50 % of the
   distance the float32 run moved them (:data:`TOLERANCE`; a bound for gross errors only:
   rounding alone puts fp16 16 % and bf16 22 % away on the CPU, as BatchNorm leaves the scale of
   the weights before it free). One fixed batch without augmentation, so that the device's random numbers
   (shuffling, crops) do not enter. The fp16 run's scaler must have been updated once per step
   (its growth counter equals the steps, unless it backed off).
3. **lab**: notebook 01's lab set-up (the ``lab`` profile with a GPU: resnet56 teacher, resnet20
   student alone and distilled, α = 0.9, T = 4, batch 128, lr 0.1 cosine, ``precision="auto"``)
   on synthetic CIFAR-10-shaped images whose classes can be learned, for a few epochs: seconds
   per epoch and accuracy.
4. **bench**: :func:`kdlab.bench.run_benchmark` at batch 128, DML with 2 × ResNet-32, kdlab's
   loop against the common loop: images per second and their ratio.
5. **memory**: the peak GPU memory of each section (allocated and reserved, MiB).

Sizes (``--size``): ``full`` on a GPU (under 8 minutes on one; a section that would start past
:data:`BUDGET_S` is skipped, and says so), ``dry`` on the CPU (``--device cpu``: the same code,
scaled down, a few minutes on two idle cores, and never cut short), ``tiny`` for the unit test. Exit status 0 when every
check passed, 1 otherwise, 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Size", "SIZES", "TOLERANCE", "LOSS_TOLERANCE", "BUDGET_S", "check", "main"]

TOLERANCE = {"fp16": 0.5, "bf16": 0.5}  # |w_device − w_ref| / |w_fp32 − w_0|: gross errors
LOSS_TOLERANCE = 0.02  # relative difference of every step's loss
BUDGET_S = 420.0  # no section starts after 7 minutes: the whole stays under 8


@dataclasses.dataclass(frozen=True)
class Size:
    """How much each section does."""

    step_batch: int  # the one batch of the steps check
    steps: int
    lab_train: int  # synthetic training images of the lab set-up
    lab_test: int
    lab_epochs: int
    bench_batch: int
    bench_steps: int
    bench_warmup: int
    bench_rounds: int
    bench_images: int
    bench_workers: int | None  # None: one per CPU
    step_arch: str = "resnet20"
    lab_models: tuple[str, str] | None = None  # (teacher, student); None: the lab profile's
    bench_arch: str = "resnet32"
    lab_must_learn: bool = False  # the teacher must end above twice chance (enough steps)


SIZES = {
    "full": Size(32, 4, 20_000, 2_000, 3, 128, 60, 5, 3, 20_000, None, lab_must_learn=True),
    "dry": Size(32, 3, 384, 128, 2, 128, 3, 1, 1, 1_024, 2),
    # The unit test's: the same code on the smallest networks, seconds on a CPU.
    "tiny": Size(16, 2, 96, 64, 1, 16, 1, 1, 1, 256, 1, "cnn_tiny", ("cnn_small", "cnn_tiny"),
                 "cnn_tiny"),
}  # fmt: skip


def _synthetic(train: int, test: int, batch_like: bool = False, seed: int = 0):
    """CIFAR-10-shaped uint8 images whose class is learnable, under uniform per-pixel noise.

    For the lab set-up (crops and flips on): each class has its own colour, one of ten spread
    over the RGB cube, which no crop or flip changes. ``batch_like`` (the steps check: no crop,
    no flip): each class has its own fixed random pattern of pixels, on which a few steps move
    the loss less abruptly than on flat colours, so rounding shows less in it."""
    from .data import ImageDataset

    rng = np.random.default_rng(seed)
    if batch_like:
        means = 128 + rng.integers(-60, 61, size=(10, 3, 32, 32))
    else:
        corners = np.array([[r, g, b] for r in (0, 1) for g in (0, 1) for b in (0, 1)])
        colours = np.concatenate([corners, [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]]) * 150 + 50
        means = np.broadcast_to(colours[:, :, None, None], (10, 3, 32, 32))

    def split(n: int):
        labels = np.arange(n) % 10
        noise = rng.integers(-50, 51, size=(n, 3, 32, 32))
        images = np.clip(means[labels] + noise, 0, 255).astype(np.uint8)
        return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))

    train_x, train_y = split(train)
    test_x, test_y = split(test)
    crop = {"padding": 0, "flip": False} if batch_like else {"padding": 4, "flip": True}
    return ImageDataset("synthetic-cifar10", train_x, train_y, test_x, test_y,
                        [str(c) for c in range(10)], mean=(0.5,) * 3, std=(0.25,) * 3,
                        **crop)  # fmt: skip


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().double().cpu().flatten() for p in net.parameters()])


def _train_steps(data, arch: str, device: str, precision: str, fused, steps: int, out: Path):
    """``steps`` steps of one ``arch`` on the one batch of ``data``: weights, losses, state."""
    import kdlab

    config = kdlab.TrainConfig(epochs=steps, batch_size=len(data.train_labels), lr=0.1,
                               schedule="constant", device=device, precision=precision,
                               fused=fused, channels_last=True, seed=0)  # fmt: skip
    run = kdlab.run("independent", [arch], data, config=config, out=out, progress=False)
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    used = json.loads((out / "config.json").read_text())
    return {
        "weights": _flat(run.method.networks["net1"]),
        "losses": run.history.column("loss/net1/ce"),
        "scaler": {k: float(v) for k, v in state["scaler"].items() if k != "_growth_interval"},
        "fused": bool(state["optimizers"]["net1"]["param_groups"][0].get("fused")),
        "precision": used["precision"],
    }


def _compare(dev: dict, cpu: dict, ref: dict, start: torch.Tensor, name: str, steps: int):
    moved = (ref["weights"] - start).norm().item()

    def loss_diff(other: dict) -> float:
        pairs = zip(dev["losses"], other["losses"], strict=True)
        return max(abs(a - b) / abs(b) for a, b in pairs)

    result = {
        "precision": dev["precision"],
        "fused_sgd": dev["fused"],
        "vs_cpu_same_precision": (dev["weights"] - cpu["weights"]).norm().item() / moved,
        "vs_cpu_fp32": (dev["weights"] - ref["weights"]).norm().item() / moved,
        "cpu_same_vs_cpu_fp32": (cpu["weights"] - ref["weights"]).norm().item() / moved,
        "first_loss": dev["losses"][0],
        "first_loss_cpu": cpu["losses"][0],
        "last_loss": dev["losses"][-1],
        "last_loss_cpu_fp32": ref["losses"][-1],
        "loss_vs_cpu_same_precision": loss_diff(cpu),
        "loss_vs_cpu_fp32": loss_diff(ref),
        "tolerance": TOLERANCE[name],
        "scaler": dev["scaler"],
    }
    finite = all(math.isfinite(v) for v in dev["losses"]) and bool(dev["weights"].isfinite().all())
    ok = finite and result["vs_cpu_same_precision"] <= TOLERANCE[name]
    ok = ok and result["vs_cpu_fp32"] <= TOLERANCE[name]
    ok = ok and max(result["loss_vs_cpu_same_precision"], result["loss_vs_cpu_fp32"]) <= (
        LOSS_TOLERANCE
    )
    if name == "fp16":  # one scaler update per step: the growth counter counts the steps
        scale, tracker = dev["scaler"].get("scale", 0.0), dev["scaler"].get("_growth_tracker")
        ok = ok and (tracker == steps or scale < 2.0**16)
    result["ok"] = bool(ok)
    return result


def steps_section(device: torch.device, size: Size, work: Path) -> dict:
    """fp16 + scaler + fused SGD and bf16 on the device, against the CPU (module docstring)."""
    import kdlab

    data = _synthetic(size.step_batch, size.step_batch, batch_like=True)
    kdlab.seed_everything(0)  # the initial weights kdlab.run builds
    arch, steps = size.step_arch, size.steps
    start = _flat(kdlab.build_model(arch, 10, 3))
    fused = "auto" if device.type == "cuda" else True  # on the CPU, force CUDA's kernel
    ref = _train_steps(data, arch, "cpu", "fp32", False, steps, work / "cpu-fp32")
    out: dict[str, Any] = {"steps": steps, "batch": size.step_batch, "arch": arch}
    for name in ("fp16", "bf16"):
        cpu = _train_steps(data, arch, "cpu", name, True, steps, work / f"cpu-{name}")
        dev = _train_steps(data, arch, str(device), name, fused, steps, work / f"dev-{name}")
        out[name] = _compare(dev, cpu, ref, start, name, steps)
    out["ok"] = out["fp16"]["ok"] and out["bf16"]["ok"]
    return out


def lab_section(device: torch.device, size: Size, work: Path) -> dict:
    """Notebook 01's lab set-up on synthetic CIFAR-10-shaped data (module docstring)."""
    import kdlab

    prof = kdlab.profile("lab")  # its GPU set-up: CIFAR-10, resnet56 → resnet20
    if size.lab_models:
        prof = dataclasses.replace(prof, teacher=size.lab_models[0], student=size.lab_models[1])
    data = _synthetic(size.lab_train, size.lab_test)
    config = prof.train_config(seed=0, epochs=size.lab_epochs, device=str(device))
    runs = {}
    common = dict(config=config, progress=False)
    runs["teacher"] = kdlab.run("independent", [prof.teacher], data, out=work / "teacher",
                                **common)  # fmt: skip
    runs["student alone"] = kdlab.run("independent", [prof.student], data,
                                      out=work / "alone", **common)  # fmt: skip
    teacher = runs["teacher"].method.networks["net1"]
    runs["student distilled"] = kdlab.run("kd", [prof.student], data, teacher=teacher,
                                          out=work / "kd", alpha=0.9, temperature=4.0,
                                          **common)  # fmt: skip
    rows = {}
    for label, run in runs.items():
        net = "student" if label == "student distilled" else "net1"
        losses = [v for row in run.history for k, v in row.items() if k.startswith("loss/")]
        used = json.loads((run.out / "config.json").read_text())
        rows[label] = {
            "arch": prof.teacher if label == "teacher" else prof.student,
            "final_acc": run.history.final(net),
            "seconds_per_epoch": run.history.column("seconds"),
            "precision": used["precision"],
            "channels_last": used["channels_last"],
            "finite": all(math.isfinite(v) for v in losses),
        }
    chance = 100 / data.num_classes
    learns = rows["teacher"]["final_acc"] > 2 * chance
    result = {"train_images": size.lab_train, "test_images": size.lab_test,
              "epochs": size.lab_epochs, "batch_size": config.batch_size, "lr": config.lr,
              "schedule": config.schedule, "runs": rows, "teacher_beats_chance": learns}  # fmt: skip
    # The dry and tiny sizes train a few steps only: their accuracy is reported, not required.
    result["ok"] = all(r["finite"] for r in rows.values()) and (learns or not size.lab_must_learn)
    return result


def bench_section(device: torch.device, size: Size, work: Path) -> dict:
    """DML 2 × ResNet-32 at batch 128: kdlab's loop against the common loop."""
    from .bench import run_benchmark

    messages: list[str] = []
    (result,) = run_benchmark(
        rows=("dml",), models=(size.bench_arch,), batch_size=size.bench_batch,
        steps=size.bench_steps, warmup=size.bench_warmup, rounds=size.bench_rounds,
        device=str(device), train_images=size.bench_images, workers=size.bench_workers,
        log=messages.append,
    )  # fmt: skip
    out = result.to_dict()
    out.update(batch_size=size.bench_batch, steps=size.bench_steps, log=messages)
    out["ok"] = bool(result.ratio and math.isfinite(result.ratio))
    return out


def environment(device: torch.device) -> dict:
    from . import __version__
    from .precision import cpu_has_native_bf16, pick_precision, precision_name

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kdlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "auto_precision": precision_name(pick_precision("auto", device)),
        "cpu": platform.processor() or platform.machine(),
        "cpu_native_bf16": cpu_has_native_bf16(),
    }
    if device.type == "cuda":
        env.update(
            name=torch.cuda.get_device_name(device),
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
        )
    return env


SECTIONS: dict[str, Callable[[torch.device, Size, Path], dict]] = {
    "steps": steps_section,
    "lab": lab_section,
    "bench": bench_section,
}


def _memory(device: torch.device) -> dict | None:
    if device.type != "cuda":
        return None
    return {
        "peak_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
        "peak_reserved_mib": round(torch.cuda.max_memory_reserved(device) / 2**20, 1),
    }


def check(out: Path, device: torch.device, size: Size, budget_s: float = BUDGET_S) -> dict:
    """Run every section, write ``out/gpu-check.json`` and ``.md``; returns the report."""
    started = time.perf_counter()
    report: dict[str, Any] = {"size": dataclasses.asdict(size), "environment": environment(device),
                              "tolerance": {"weights": TOLERANCE, "first_loss": LOSS_TOLERANCE},
                              "sections": {}, "memory": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kdlab-gpu-check-") as tmp:
        for name, section in SECTIONS.items():
            elapsed = time.perf_counter() - started
            if elapsed > budget_s:
                report["sections"][name] = {
                    "ok": False,
                    "skipped": f"over budget ({elapsed:.0f} s)",
                }
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            began = time.perf_counter()
            try:
                result = section(device, size, Path(tmp) / name)
            except Exception as error:  # noqa: BLE001 — reported, and the other sections run
                result = {"ok": False, "error": f"{type(error).__name__}: {error}",
                          "traceback": traceback.format_exc(limit=8)}  # fmt: skip
            result["seconds"] = round(time.perf_counter() - began, 1)
            report["sections"][name] = result
            report["memory"][name] = _memory(device)
            print(f"gpu-check: {name}: {'ok' if result['ok'] else 'FAILED'} "
                  f"({result['seconds']} s)", file=sys.stderr, flush=True)  # fmt: skip
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["ok"] = all(s["ok"] for s in report["sections"].values())
    out.mkdir(parents=True, exist_ok=True)
    from .io import write_json, write_text

    write_json(out / "gpu-check.json", report)
    write_text(out / "gpu-check.md", markdown(report))
    return report


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "–" if value is None else format(value, spec)


def _markdown_steps(steps: dict) -> list[str]:
    lines = [
        "| precision | fused SGD | device vs CPU, same precision | device vs CPU fp32 "
        "| CPU vs CPU fp32 | losses vs CPU / vs CPU fp32 | last loss (device / CPU fp32) "
        "| scaler (scale, growth) | ok |",
        "|---|---|---:|---:|---:|---|---|---|---|",
    ]
    for name in ("fp16", "bf16"):
        r = steps.get(name)
        if not r:
            continue
        scaler = r["scaler"]
        shown = f"{scaler['scale']:g}, {scaler['_growth_tracker']:g}" if scaler else "off"
        lines.append(
            f"| {r['precision']} | {r['fused_sgd']} | {_pct(r['vs_cpu_same_precision'])} "
            f"| {_pct(r['vs_cpu_fp32'])} | {_pct(r['cpu_same_vs_cpu_fp32'])} "
            f"| {_pct(r['loss_vs_cpu_same_precision'])} / {_pct(r['loss_vs_cpu_fp32'])} "
            f"| {r['last_loss']:.5f} / {r['last_loss_cpu_fp32']:.5f} | {shown} | {r['ok']} |"
        )
    lines += [
        "",
        f"{steps['steps']} steps of a {steps['arch']} on one fixed batch of {steps['batch']} "
        "images. Weights: the distance between the two runs' weights after the steps, relative "
        "to the distance the CPU float32 run moved them (at most "
        f"{_pct(TOLERANCE['fp16'])}: gross errors only). Losses: the largest relative "
        f"difference of a step's loss (at most {_pct(LOSS_TOLERANCE)}).",
    ]
    return lines


def _markdown_lab(lab: dict) -> list[str]:
    lines = [
        f"{lab['train_images']} training and {lab['test_images']} test images, "
        f"{lab['epochs']} epochs, batch {lab['batch_size']}, lr {lab['lr']} {lab['schedule']}; "
        f"the teacher beats chance: {lab['teacher_beats_chance']}.",
        "",
        "| run | network | final accuracy (%) | s/epoch | precision | channels_last |",
        "|---|---|---:|---|---|---|",
    ]
    for label, r in lab["runs"].items():
        seconds = ", ".join(f"{s:.2f}" for s in r["seconds_per_epoch"])
        lines.append(
            f"| {label} | {r['arch']} | {r['final_acc']:.2f} | {seconds} | {r['precision']} "
            f"| {r['channels_last']} |"
        )
    return lines


def _markdown_bench(bench: dict) -> list[str]:
    return [
        f"{bench['models']}, batch {bench['batch_size']}, {bench['steps']} timed steps per path.",
        "",
        "| reference img/s | kdlab img/s | kdlab / reference |",
        "|---:|---:|---:|",
        f"| {_fmt(bench['reference_img_s'], '.1f')} | {_fmt(bench['kdlab_img_s'], '.1f')} "
        f"| {_fmt(bench['ratio'], '.2f')}× |",
    ]


def markdown(report: dict) -> str:
    """The report as Markdown: one table per section, then any error with its traceback."""
    env = report["environment"]
    where = env.get("name", env["cpu"]) + (
        f" (compute capability {env['capability']}, CUDA {env['cuda']}, cuDNN {env['cudnn']})"
        if "capability" in env
        else " (the CPU: a dry run)"
    )
    verdict = "every check passed" if report["ok"] else "some checks FAILED"
    lines = [
        "# kdlab GPU check",
        "",
        f"{env['date']} · kdlab {env['kdlab']} · torch {env['torch']} · device {env['device']}: "
        f'{where} · `precision="auto"` picks {env["auto_precision"]} here · size '
        f"{report['size']} · **{verdict}** in {report['seconds']} s.",
    ]
    titles = {
        "steps": ("1. Steps: fp16 + gradient scaler + fused SGD, and bf16, against the CPU",
                  _markdown_steps),
        "lab": ("2. Notebook 01's lab set-up on synthetic CIFAR-10-shaped data", _markdown_lab),
        "bench": ("3. bench: DML, kdlab's loop against the common loop", _markdown_bench),
    }  # fmt: skip
    for name, (title, render) in titles.items():
        section = report["sections"].get(name)
        lines += ["", f"## {title}", ""]
        if section is None:
            lines.append("Not run.")
            continue
        if section.get("error") or section.get("skipped"):
            lines += [f"**{section.get('error') or section.get('skipped')}**", ""]
            if "traceback" in section:
                lines += ["```", section["traceback"].rstrip(), "```"]
            continue
        lines += render(section) + ["", f"{section['seconds']} s; ok: {section['ok']}."]
    lines += ["", "## 4. Peak GPU memory", ""]
    if all(m is None for m in report["memory"].values()):
        lines.append("Not measured: the device is the CPU.")
    else:
        lines += ["| section | peak allocated (MiB) | peak reserved (MiB) |", "|---|---:|---:|"]
        for name, m in report["memory"].items():
            if m:
                lines.append(f"| {name} | {m['peak_allocated_mib']} | {m['peak_reserved_mib']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdlab.gpucheck", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, help="the folder for gpu-check.json and .md")
    parser.add_argument(
        "--device", default="auto", help="auto (cuda where there is one), cuda, cpu"
    )
    parser.add_argument(
        "--size", choices=sorted(SIZES), help="default: full on CUDA, dry elsewhere"
    )
    args = parser.parse_args(argv)
    from .train import pick_device

    try:
        device = pick_device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no CUDA device here")
    except (RuntimeError, ValueError) as error:
        print(f"gpu-check: error: {error}", file=sys.stderr)
        return 2
    size = SIZES[args.size or ("full" if device.type == "cuda" else "dry")]
    budget = BUDGET_S if device.type == "cuda" else math.inf  # the dry run runs to its end
    report = check(Path(args.out), device, size, budget)
    print(f"gpu-check: {'every check passed' if report['ok'] else 'some checks FAILED'} in "
          f"{report['seconds']} s; report in {args.out}/gpu-check.md")  # fmt: skip
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
