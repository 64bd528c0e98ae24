"""The compute dtype of sampling and training: ``precision: auto | fp32 | bf16``, resolved at run time.

``auto`` means bf16 autocast where bf16 matmul is native and fast, fp32 elsewhere:

- CUDA: bf16 (every GPU this project targets has bf16 tensor cores).
- CPU: bf16 autocast where the CPU has AMX-BF16 (``amx_bf16``: Sapphire Rapids and later Xeons) or AVX512-BF16
  (``avx512_bf16``: Cooper Lake Xeons, AMD Zen 4 and later), fp32 elsewhere. Without either flag oneDNN emulates
  bf16 matmul by converting to fp32 and back, which is slower than fp32 itself.

Why AVX512-BF16 counts and not only AMX: the rule was first written for AMX (bf16 matmul several times faster than
fp32 on an AMX Xeon). On an AMD EPYC with ``avx512_bf16`` and no AMX (the machine this project is developed on)
bf16 autocast was measured faster too: GRN sampling 2.4x (91.6 s fp32 vs 38.8 s bf16) and a generator training
step 1.63-1.74x; re-measured on a loaded machine (2026-12-02) 1.53x and 1.35x by the median, 1.93x and 1.96x by the
best run (``bench/sampler.py --precision compare``, ``bench/train_step.py``; docs/sampler.md#precision), with
digits-FID unchanged within its seed noise. The ``vdpbf16ps`` instruction does a bf16 dot product at twice the fp32
rate, so oneDNN's bf16 kernels win there too.

The flags are read from ``/proc/cpuinfo`` (Linux, x86); where that file is missing, PyTorch's own CPU probes are
asked. Each decision is logged once per process, with the flag that decided it.

What autocast leaves in fp32 is decided by the networks, not here: RMSNorm computes in fp32, and the output layers
(logits) of :class:`~grn.models.generator.GRN` and :class:`~grn.models.t2iv.T2IVNet` run with autocast off, so the
sampler's softmax, Gumbel draw and guidance see fp32 logits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "autocast",
    "cpu_bf16_flag",
    "cpu_flags",
    "lightning_precision",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags (as /proc/cpuinfo spells them) under which bf16 matmul is native, in order of preference
FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")

_logged: set[tuple[str, str, str]] = set()


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags of the first ``flags`` line of ``cpuinfo``, or None where the file cannot be read or
    has no such line (not Linux, not x86)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return None


def _torch_flags() -> set[str]:
    """The same flags from PyTorch's CPU probes (private helpers; absent ones count as absent flags)."""
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    found = set()
    for flag, name in probes.items():
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                found.add(flag)
        except RuntimeError:
            pass
    return found


def cpu_bf16_flag(flags: Iterable[str] | None = None) -> str | None:
    """The first of :data:`FAST_BF16_FLAGS` this CPU has (``flags`` given, or detected), or None."""
    have = set(flags) if flags is not None else cpu_flags()
    if have is None:
        have = _torch_flags()
    return next((f for f in FAST_BF16_FLAGS if f in have), None)


def _device_type(device: str | torch.device) -> str:
    """``"cuda:1"`` / ``torch.device("cuda", 1)`` -> ``"cuda"`` (any name: Lightning accelerators too)."""
    return device.type if isinstance(device, torch.device) else str(device).split(":")[0]


def resolve_precision(precision: str, device: str | torch.device = "cpu",
                      flags: Iterable[str] | None = None) -> str:
    """``auto`` -> ``bf16`` or ``fp32`` for ``device`` (module docstring); ``fp32`` and ``bf16`` are returned as
    given. ``flags`` replaces the detected CPU flags (tests). Logs the decision for ``auto`` once per process."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is invalid: choose one of {' | '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    kind = _device_type(device)
    if kind == "cuda":
        resolved, reason = "bf16", "CUDA device"
    elif kind == "cpu":
        flag = cpu_bf16_flag(flags)
        resolved = "bf16" if flag else "fp32"
        reason = f"the CPU has {flag}" if flag else f"the CPU has none of {', '.join(FAST_BF16_FLAGS)}"
    else:  # mps, xpu, ...: not measured here, so no autocast
        resolved, reason = "fp32", f"no bf16 rule for device type {kind!r}"
    if (kind, resolved, reason) not in _logged:
        _logged.add((kind, resolved, reason))
        log.info("precision=auto on %s: %s (%s)", kind, resolved, reason)
    return resolved


def autocast(precision: str, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager:
    """A context for the network passes: ``torch.autocast(bf16)`` where ``precision`` resolves to ``bf16`` on
    ``device``, else a no-op (fp32)."""
    kind = _device_type(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lightning_precision(precision: str | int | None, accelerator: str | None = "cpu",
                        flags: Iterable[str] | None = None) -> str | int | None:
    """``trainer.precision``: ``auto`` -> Lightning's ``bf16-mixed`` or ``32-true`` by the rule above for the
    trainer's accelerator (``cpu``, ``gpu``/``cuda``, or ``auto``: CUDA where one is visible); any other value
    is Lightning's own and is returned unchanged."""
    if precision != "auto":
        return precision
    accelerator = str(accelerator or "auto")
    if accelerator == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = "cuda" if accelerator in ("gpu", "cuda") else accelerator
    return "bf16-mixed" if resolve_precision("auto", device, flags) == "bf16" else "32-true"
