"""scripts/gpu_check.sh --dry-run: every stage of the GPU check runs on the CPU with tiny sizes (the gpu tests
report skipped, nothing is installed) and the one JSON holds every figure the real run reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("install", "environment", "flash_attn", "gpu_tests", "sampler", "train_step")


@pytest.mark.slow  # 1-2 min of CPU: make test-slow, which .ci/run runs after make test
@pytest.mark.timeout(600)
def test_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "report" / "gpu_check.json"
    env = {**os.environ, "GRN_PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["ok"] is True
    assert set(report) >= {"finished", "total_seconds", "budget_seconds", "git_commit", "environment", "stages",
                           "flash_attn", "gpu_tests", "sampler", "train_step", "mfu"}
    assert report["total_seconds"] <= report["budget_seconds"] == 480
    assert tuple(report["stages"]) == STAGES
    assert report["stages"]["install"]["status"] == "skipped"  # GRN_PYTHON given: nothing is installed
    assert all(report["stages"][s]["status"] == "ok" for s in STAGES[1:]), report["stages"]
    assert report["environment"]["cuda_available"] is False and report["environment"]["torch"]

    tests = report["gpu_tests"]
    assert tests["skipped"] == len(tests["tests"]) >= 8 and tests["failed"] == tests["error"] == 0
    assert all(t["message"] == "no CUDA GPU visible" for t in tests["tests"])
    names = {t["name"].rsplit("::", 1)[1].split("[")[0] for t in tests["tests"]}
    assert {"test_flash_attn_matches_sdpa_logits", "test_compiled_block_matches_eager_under_bf16",
            "test_fsdp2_on_one_gpu_with_nccl", "test_sampler_bench_on_cuda"} <= names

    sampler = report["sampler"]
    assert sampler["device"] == "cpu" and sampler["size"] == "tiny"
    assert sampler["fast"]["fp32"]["seconds"] > 0 and sampler["fast"]["bf16"]["seconds"] > 0
    assert sampler["bf16_speedup"] > 0 and sampler["reference"]["speedup"] > 0
    step = report["train_step"]
    assert set(step["precision"]) == {"fp32", "bf16"} and step["bf16_speedup"] > 0
    assert all(step["precision"][p]["losses_finite"] for p in ("fp32", "bf16"))
    assert step["params"] > 0 and report["mfu"] is None and step["peak_bf16_flops"] is None  # no GPU: no peak
    assert f"wrote {out}" in proc.stdout
    assert not list(tmp_path.glob("gpu_check.*"))  # its scratch folder is removed
