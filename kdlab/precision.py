"""Mixed precision and the optimizer's kernel: what the loop picks for a device, and why.

One rule, in :func:`pick_precision`:

- CUDA, compute capability ≥ 8.0 (A100, L4, H100…): bf16 autocast. bf16 has float32's
  exponent range, so gradients need no scaling.
- CUDA below 8.0 (a Colab T4 is 7.5): fp16 autocast with a gradient scaler. fp16's small range
  would flush small gradients to zero; the scaler multiplies the loss by a large factor before
  ``backward`` and divides the gradients by it before the step (skipping a step whose gradients
  overflowed, then lowering the factor).
- CPU: bf16 where the CPU computes in bf16 natively (:func:`cpu_has_native_bf16`: AMX tiles,
  Intel Xeon 4th generation and later, or AVX512-BF16 dot products, AMD Zen 4 and later and
  Intel Cooper Lake), where oneDNN runs bf16 convolutions natively; otherwise float32, since
  elsewhere bf16 is emulated. MPS: float32.

``precision="fp32" | "bf16" | "fp16"`` forces a choice on any device: the tests run the fp16 +
scaler path of a T4 on the CPU that way (and ``TrainConfig(fused=True)`` CUDA's fused SGD:
:mod:`kdlab.optim`).

Evaluation never runs under autocast (every task evaluates in float32, e.g.
:func:`kdlab.tasks.classification.evaluate`): the
precision changes how a network is trained, not how its test metrics are measured.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

__all__ = [
    "Precision",
    "pick_precision",
    "precision_name",
    "cpu_has_amx",
    "cpu_has_native_bf16",
    "cuda_capability",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _cpu_probe(name: str) -> bool:
    """``torch.cpu.<name>()``, or False where this torch has no such probe."""
    probe = getattr(torch.cpu, name, None)
    return bool(probe()) if probe is not None else False


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Xeon 4th generation and later). False where this
    torch cannot tell."""
    return _cpu_probe("_is_amx_tile_supported")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AMX tiles or the AVX512-BF16 instructions.

    The probes are torch's own CPU-feature queries, ``torch.cpu._is_amx_tile_supported()`` and
    ``torch.cpu._is_avx512_bf16_supported()`` (cpuinfo's ``amx_tile`` and ``avx512_bf16``
    flags, the ``lscpu`` flags of those names; both in torch ≥ 2.3).
    ``torch.backends.cpu.get_cpu_capability()`` cannot tell: it names the vector width torch's
    kernels use ("AVX512"), the same with and without bf16. False where this torch has neither
    probe, and on other architectures (an ARM CPU's bf16 is not probed).
    """
    return cpu_has_amx() or _cpu_probe("_is_avx512_bf16_supported")


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """The CUDA device's compute capability, e.g. ``(7, 5)`` for a T4, ``(8, 0)`` for an A100."""
    return torch.cuda.get_device_capability(device)


def pick_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``None`` (float32, no autocast), ``torch.bfloat16`` or ``torch.float16``.

    ``precision="auto"``: bf16 on CUDA compute capability ≥ 8.0, fp16 below it (the loop adds a
    gradient scaler); on a CPU, bf16 where it computes bf16 natively (:func:`cpu_has_native_bf16`:
    AMX or AVX512-BF16; with AMX a resnet32 step was measured twice as fast on two cores, and
    with AVX512-BF16 a DML epoch 1.5× as fast, accuracy within noise: README, Performance),
    otherwise float32 (bf16 would be emulated), as on MPS. "fp32", "bf16" and "fp16" force a choice.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        major, _ = cuda_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """How a run names the precision :func:`pick_precision` chose: "bfloat16", "float16", "float32"."""
    return str(dtype or torch.float32).replace("torch.", "")


@dataclasses.dataclass
class Precision:
    """The precision of one run: its autocast and its gradient scaler (enabled for fp16 only).

    ``Precision.pick("auto", device)`` applies :func:`pick_precision`'s rule.
    """

    dtype: torch.dtype | None  # None: float32, no autocast
    device: torch.device
    scaler: torch.amp.GradScaler = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.scaled)

    @property
    def scaled(self) -> bool:
        """Whether gradients are scaled: fp16 only (bf16 and float32 have float32's range)."""
        return self.dtype == torch.float16

    @classmethod
    def pick(cls, precision: str, device: torch.device) -> Precision:
        return cls(pick_precision(precision, device), device)

    @property
    def name(self) -> str:
        return precision_name(self.dtype)

    def autocast(self):
        """The context the training step runs in: autocast to ``dtype``, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)
