"""FSDP2 on one GPU with NCCL through train.py (``trainer=fsdp``: grn's FSDP2Strategy, ``mixed_precision: auto`` =
bf16 parameters with fp32 reduction on CUDA): both quickstart stages train sharded, the periodic checkpoint is a
sharded folder and the final one a single file with finite weights that moved. The CPU version with gloo and 2
ranks is tests/distributed/test_fsdp.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grn.checkpoints import load_consolidated

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")]

ROOT = Path(__file__).resolve().parents[2]


def train_one_device(work: Path, accelerator: str = "gpu", backend: str = "nccl") -> Path:
    """The quickstart's two stages, 4 steps each, under trainer=fsdp on one device; returns the runs folder."""
    env = {**os.environ, "GRN_LOG_DIR": str(work / "runs"), "GRN_CACHE_DIR": str(work / "cache")}
    env.pop("GRN_RUN_ID", None)
    args = ["experiment=quickstart", "run_id=one", "report=false", "extras.print_config=false",
            "callbacks.progress_bar=null", "trainer=fsdp", f"trainer.accelerator={accelerator}", "trainer.devices=1",
            f"+trainer.strategy.process_group_backend={backend}", "max_steps=4",
            "callbacks.model_checkpoint.every_n_train_steps=2", "stages.tokenizer.lit_module.lpips_weight=0",
            "stages.tokenizer.lit_module.disc_start=1"]  # the discriminator is sharded and stepped too
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return work / "runs" / "one"


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory) -> Path:
    return train_one_device(tmp_path_factory.mktemp("fsdp_nccl"))


def check_stage(run: Path, stage: str, prefix: str) -> None:
    ckpts = run / stage / "checkpoints"
    folder = ckpts / "step0000002.ckpt"
    assert folder.is_dir() and [p.name for p in folder.glob("*.distcp")] == ["__0_0.distcp"]  # one rank's shards
    last = torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 4
    step2 = load_consolidated(folder)["state_dict"]
    trained = [k for k in step2 if k.startswith(prefix)]
    weights = last["state_dict"]
    assert trained and all(step2[k].shape == weights[k].shape for k in trained)
    assert any(not torch.equal(step2[k].cpu(), weights[k]) for k in trained)  # it trained on
    # the sharded master weights stay fp32 (the bf16 policy casts copies for compute), and finite
    assert all(weights[k].dtype == torch.float32 for k in trained if weights[k].is_floating_point())
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.parametrize("stage, prefix", [("tokenizer", "tokenizer."), ("c2i", "net.")])
def test_fsdp2_on_one_gpu_with_nccl(gpu_run, stage, prefix):
    check_stage(gpu_run, stage, prefix)
