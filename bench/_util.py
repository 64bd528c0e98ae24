"""Shared by the benchmarks in bench/ (not a benchmark itself: `make bench` skips files starting with `_`):
device synchronisation and timing, a measured matmul peak, the GPU peak table for MFU, and the JSON writer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from the vendors' data sheets, by a substring of
# torch.cuda.get_device_name(). Order matters: the first match wins ("H100 PCIe" before "H100").
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),   # SXM / HBM3
    ("A100", 312e12),
)


def peak_bf16_flops(device: torch.device) -> tuple[str | None, float | None]:
    """``(device name, dense bf16 peak FLOP/s)`` of a CUDA device from :data:`PEAK_BF16_FLOPS`; the peak is None
    for a GPU not in the table and for any other device (MFU is then reported as null)."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """``(fn(), seconds)``, with the device's queued work inside the window."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """Achieved GFLOP/s of an ``n x n`` matmul in ``dtype`` on ``device`` (a same-machine yardstick)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _, seconds = timed(lambda: [a @ b for _ in range(reps)], device)
    return 2 * n**3 * reps / seconds / 1e9


def write_json(record: dict, path: str | Path | None) -> None:
    """Write ``record`` to ``path`` (when given) as indented JSON, creating the folder."""
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
