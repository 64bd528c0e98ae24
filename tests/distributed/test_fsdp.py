"""FSDP2 on 2 CPU ranks (gloo) through train.py: the GAN tokenizer and the generator train sharded, periodic
checkpoints are sharded folders, and a folder saved by 2 ranks resumes on 1 rank with the same weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grn.checkpoints import export_ema, load_consolidated

# slow: two gloo ranks train both stages sharded (~33 s of setup) and a one-rank resume (~20 s); make test-slow
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COMMON = [
    "experiment=quickstart",
    "report=false",
    "extras.print_config=false",
    "callbacks.progress_bar=null",
    "trainer=fsdp",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "stages.tokenizer.val_every=2",  # validation swaps EMA weights into the shards and back
    "stages.c2i.val_every=2",
    "stages.tokenizer.lit_module.lpips_weight=0",
    "stages.tokenizer.lit_module.disc_start=1",  # the discriminator is sharded and stepped too
    "data.batch_size=16",
    "stages.c2i.datamodule.batch_size=32",
]


def train(work: Path, *extra: str) -> None:
    env = {**os.environ, "GRN_LOG_DIR": str(work / "runs"), "GRN_CACHE_DIR": str(work / "cache"),
           "OMP_NUM_THREADS": "1"}
    env.pop("GRN_RUN_ID", None)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *COMMON, *extra], cwd=work, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("fsdp")
    train(work, "run_id=two", "trainer.devices=2", "max_steps=4")
    return work


@pytest.mark.parametrize("stage", ["tokenizer", "c2i"])
def test_two_ranks_train_sharded_with_sharded_checkpoints(sharded_run, stage):
    ckpts = sharded_run / "runs" / "two" / stage / "checkpoints"
    folder = ckpts / "step0000002.ckpt"
    assert folder.is_dir() and sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    last = torch.load(ckpts / "last.ckpt", weights_only=True)  # the final state, gathered into one file
    assert last["global_step"] == 4
    step2 = load_consolidated(folder)["state_dict"]
    prefix = "net." if stage == "c2i" else "tokenizer."
    trained = [k for k in step2 if k.startswith(prefix)]
    assert trained and all(step2[k].shape == last["state_dict"][k].shape for k in trained)
    assert any(not torch.equal(step2[k], last["state_dict"][k]) for k in trained)  # it trained on
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_two_rank_checkpoint_resumes_on_one_rank(sharded_run, tmp_path):
    runs = sharded_run / "runs"
    tok_folder = runs / "two" / "tokenizer" / "checkpoints" / "step0000002.ckpt"
    gen_folder = runs / "two" / "c2i" / "checkpoints" / "step0000002.ckpt"
    # resume each stage on ONE rank from the 2-rank folder, with nothing left to train: what it writes is
    # exactly what it loaded (resharded 2 -> 1)
    train(sharded_run, "run_id=one", "trainer.devices=1", "max_steps=2", "run_stages=[tokenizer]",
          f"ckpt_path={tok_folder}")
    tokenizer = runs / "two" / "tokenizer" / "checkpoints" / "last.ckpt"
    train(sharded_run, "run_id=one", "trainer.devices=1", "max_steps=2", "run_stages=[c2i]",
          f"ckpt_path={gen_folder}", f"stages.c2i.tokenizer_ckpt={tokenizer}")
    for stage, folder in (("tokenizer", tok_folder), ("c2i", gen_folder)):
        saved = load_consolidated(folder)["state_dict"]
        resumed = torch.load(runs / "one" / stage / "checkpoints" / "last.ckpt", weights_only=True)
        assert resumed["global_step"] == 2
        for key, value in resumed["state_dict"].items():
            assert torch.equal(value, saved[key]), key
        # the weights-only EMA export reads the folder directly and matches the export of the 1-rank file
        a, b = export_ema(folder, tmp_path / f"{stage}_a.ckpt"), export_ema(
            runs / "one" / stage / "checkpoints" / "last.ckpt", tmp_path / f"{stage}_b.ckpt")
        sa, sb = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
