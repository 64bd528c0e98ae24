"""The benchmarks run on CUDA: bench/sampler.py (fast sampler fp32 and bf16 against the reference sampler) and
bench/train_step.py (fp32 vs bf16 step, MFU where the GPU's peak is known), each writing its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")]

ROOT = Path(__file__).resolve().parents[2]


def bench(tmp_path: Path, script: str, *args: str) -> dict:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, f"bench/{script}.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return json.loads(out.read_text())


def test_sampler_bench_on_cuda(tmp_path):
    record = bench(tmp_path, "sampler", "--device", "cuda", "--batch", "4", "--steps", "8", "--precision", "compare")
    assert record["device"] == "cuda" and record["guided"] > 0
    for precision in ("fp32", "bf16"):
        assert record["fast"][precision]["seconds"] > 0 and record["fast"][precision]["gflops"] > 0
    assert 0.0 <= record["bf16_labels_equal_share"] <= 1.0 and record["bf16_speedup"] > 0
    ref = record["reference"]
    assert ref["seconds"] > 0 and ref["compared_precision"] == "fp32" and 0.0 <= ref["labels_equal_share"] <= 1.0


def test_train_step_bench_on_cuda(tmp_path):
    record = bench(tmp_path, "train_step", "--device", "cuda", "--size", "small", "--batch", "16", "--steps", "3",
                   "--warmup", "1")
    assert record["gpu_name"] == torch.cuda.get_device_name(0)
    for precision in ("fp32", "bf16"):
        figures = record["precision"][precision]
        assert figures["losses_finite"] and figures["step_seconds"] > 0 and figures["counted_flops_per_step"] > 0
    # MFU exactly where the GPU's bf16 peak is in the table, and never for the fp32 step
    assert (record["mfu"] is None) == (record["peak_bf16_flops"] is None)
    assert record["precision"]["fp32"]["mfu"] is None
    if record["mfu"] is not None:
        assert 0 < record["mfu"] < 1
