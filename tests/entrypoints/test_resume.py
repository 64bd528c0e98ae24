"""Resume equivalence under DDP on 2 CPU ranks (gloo): N steps straight vs. a run SIGKILLed after its N/2
checkpoint and resumed with ``ckpt_path: auto`` give the same parameters and the same logged losses, for the GAN
tokenizer and for the generator (which crosses an epoch boundary after the resume)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# four 2-rank train.py runs (~70 s on 2 cores): `make test-slow` (CI runs it after `make test`)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HELPERS = ROOT / "tests" / "distributed"  # kill_callback.py, imported by the training processes
N, CKPT_EVERY, KILL_AT = 6, 3, 4

COMMON = [
    "experiment=quickstart",
    "report=false",
    "extras.print_config=false",
    "callbacks.progress_bar=null",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "trainer.log_every_n_steps=1",
    f"max_steps={N}",
    f"callbacks.model_checkpoint.every_n_train_steps={CKPT_EVERY}",
    f"stages.tokenizer.val_every={CKPT_EVERY}",
    f"stages.c2i.val_every={CKPT_EVERY}",
    "stages.tokenizer.lit_module.lpips_weight=0",  # no LPIPS net: the test is about state, not quality
    "stages.tokenizer.lit_module.disc_start=2",  # both GAN phases, and the switch, inside the run
    "data.batch_size=96",
    "stages.c2i.datamodule.batch_size=128",  # 718 digits per rank -> 5 batches per epoch: step 6 is epoch 1
]


def train(work: Path, run_id: str, *extra: str, expect_kill: bool = False) -> None:
    env = {
        **os.environ,
        "GRN_LOG_DIR": str(work / "runs"),
        "GRN_CACHE_DIR": str(work / "cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("GRN_RUN_ID", None)
    # a session of its own, so the kill helper's killpg takes down both ranks and nothing else
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *COMMON, f"run_id={run_id}", *extra],
        cwd=work, env=env, capture_output=True, text=True, start_new_session=True, timeout=300,
    )
    if expect_kill:
        assert proc.returncode == -signal.SIGKILL, f"expected SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    else:
        assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def kill_at(stage: str) -> list[str]:
    return [
        "+callbacks.killer._target_=kill_callback.KillAt",
        f"+callbacks.killer.stage={stage}",
        f"+callbacks.killer.step={KILL_AT}",
    ]


def logged_losses(stage_dir: Path) -> dict[int, float]:
    """``{step: train/loss}`` over every CSV log version of a stage (a killed run's unflushed rows are lost)."""
    out: dict[int, float] = {}
    for path in sorted(stage_dir.glob("version_*/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    out[int(row["step"])] = float(row["train/loss"])
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    train(work, "straight")
    # killed during the tokenizer, after its step-3 checkpoint, one step later
    train(work, "resumed", *kill_at("tokenizer"), expect_kill=True)
    # resumes the tokenizer (3 -> 6), then the generator is killed the same way
    train(work, "resumed", *kill_at("c2i"), expect_kill=True)
    train(work, "resumed")  # resumes the generator (3 -> 6)
    return work / "runs"


@pytest.mark.parametrize("stage", ["tokenizer", "c2i"])
def test_killed_and_resumed_run_equals_straight_run(runs, stage):
    straight = torch.load(runs / "straight" / stage / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(runs / "resumed" / stage / "checkpoints" / "last.ckpt", weights_only=True)
    assert straight["global_step"] == resumed["global_step"] == N
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    # optimiser moments too: the next step would also agree
    for a, b in zip(straight["optimizer_states"], resumed["optimizer_states"], strict=True):
        for sa, sb in zip(a["state"].values(), b["state"].values(), strict=True):
            torch.testing.assert_close(sb["exp_avg_sq"], sa["exp_avg_sq"], rtol=1e-6, atol=1e-10)

    a, b = logged_losses(runs / "straight" / stage), logged_losses(runs / "resumed" / stage)
    assert sorted(a) == list(range(N))
    after_resume = [s for s in range(CKPT_EVERY, N)]
    assert all(s in b for s in after_resume), sorted(b)
    for s in sorted(b):
        assert b[s] == pytest.approx(a[s], rel=1e-6), f"step {s}: {b[s]} vs {a[s]}"


def test_resume_after_kill_really_restarted_from_the_checkpoint(runs):
    # the resumed stage wrote a log version that starts at the checkpoint's step, not at 0 or at the kill
    for stage in ("tokenizer", "c2i"):
        versions = sorted((runs / "resumed" / stage).glob("version_*/metrics.csv"))
        with versions[-1].open() as f:
            steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
        assert steps[0] == CKPT_EVERY and steps[-1] == N - 1
