"""Integration tests against a real single-node SLURM cluster on localhost (scripts/slurm/start.sh).

They run: a 2-task DDP training job started with srun; a Hydra multirun through the submitit SLURM launcher; and a
pre-empted job that checkpoints, requeues itself and finishes under the same job id and run directory. Where SLURM
cannot be started (not root, no apt, no network for the packages) the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# They install slurm-wlm + munge with apt, write /etc/slurm and start munged, slurmctld and slurmd: never part of
# make test (it must leave the machine as it found it); make test-cluster runs them.
pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
START, STOP = ROOT / "scripts" / "slurm" / "start.sh", ROOT / "scripts" / "slurm" / "stop.sh"

TINY = [
    "experiment=quickstart",
    "run_stages=[tokenizer]",
    "report=false",
    "extras.print_config=false",
    "callbacks.progress_bar=null",
    "stages.tokenizer.lit_module.lpips_weight=0",
    "stages.tokenizer.lit_module.disc_start=1",
    "data.batch_size=8",
]


def _ctld_running() -> bool:
    return shutil.which("scontrol") is not None and subprocess.run(
        ["scontrol", "ping"], capture_output=True, text=True
    ).stdout.count("UP") > 0


@pytest.fixture(scope="module")
def slurm():
    """A running local SLURM; started (and at the end stopped) here unless one was already up."""
    if os.geteuid() != 0:
        pytest.skip("SLURM integration tests need root to install and start slurm-wlm + munge")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    started_here = not _ctld_running()
    if started_here:
        proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"could not start a local SLURM: {(proc.stderr or proc.stdout).strip()[-500:]}")
    yield
    if started_here:
        subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def work(tmp_path):
    env = {
        **os.environ,
        "GRN_LOG_DIR": str(tmp_path / "runs"),
        "GRN_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "distributed"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("GRN_RUN_ID", None)
    return tmp_path, env


def sbatch(script: str, work: Path, env: dict, wait: bool) -> str:
    path = work / "job.sh"
    path.write_text(script)
    args = ["sbatch", "--parsable"] + (["--wait"] if wait else []) + [str(path)]
    proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    if wait:
        assert proc.returncode == 0, f"job failed: {proc.stderr}\n" + "\n".join(
            p.read_text()[-4000:] for p in work.glob("*.out")
        )
    return proc.stdout.strip().split(";")[0]


def job_field(job_id: str, field: str) -> str | None:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    for token in out.split():
        if token.startswith(field + "="):
            return token.split("=", 1)[1]
    return None


def header(ntasks: int, work: Path) -> str:
    return (
        "#!/bin/bash\n"
        "#SBATCH --job-name=grn-test\n#SBATCH --nodes=1\n"
        f"#SBATCH --ntasks-per-node={ntasks}\n#SBATCH --cpus-per-task=1\n"
        f"#SBATCH --output={work}/job-%j.out\n#SBATCH --open-mode=append\n#SBATCH --requeue\n"
        f"#SBATCH --time=10\ncd {work}\n"
    )


def test_two_task_ddp_job_through_srun(slurm, work):
    work, env = work
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, "run_id=null", "max_steps=3",
           "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    job = sbatch(header(2, work) + "srun " + " ".join(cmd) + "\n", work, env, wait=True)
    out = (work / f"job-{job}.out").read_text()
    # Lightning took both ranks from SLURM (no processes of its own) and both trained the same stage
    assert "MEMBER: 1/2" in out and "MEMBER: 2/2" in out, out[-3000:]
    run_dir = work / "runs" / f"slurm-{job}"  # the run id is the job id
    ckpt = torch.load(run_dir / "tokenizer" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert sorted(p.name for p in (work / "runs").iterdir()) == [f"slurm-{job}"]  # one run dir for both ranks


def test_hydra_multirun_through_submitit_slurm(slurm, work):
    work, env = work
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm_cpu", "run_id=sweep", *TINY,
         "max_steps=2", "seed=0,1", "hydra.launcher.timeout_min=10"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for job_num in ("0", "1"):
        ckpt = work / "runs" / "sweep" / job_num / "tokenizer" / "checkpoints" / "last.ckpt"
        assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    logs = list((work / "runs" / "sweep" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2  # two SLURM jobs, one per setting


def test_preempted_job_requeues_itself_and_finishes(slurm, work):
    work, env = work
    steps = 40
    # the first run is paced (0.25 s per step) so it is surely still training when the signal comes; the
    # requeued run is not
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, "run_id=null", f"max_steps={steps}",
           "callbacks.model_checkpoint.every_n_train_steps=5", f"stages.tokenizer.val_every={steps}",
           "+callbacks.pace._target_=kill_callback.PaceFirstRun", "+callbacks.pace.seconds=0.25"]
    job = sbatch(header(1, work) + "srun " + " ".join(cmd) + "\n", work, env, wait=False)
    run_dir = work / "runs" / f"slurm-{job}"
    first = run_dir / "tokenizer" / "checkpoints" / "step0000005.ckpt"
    deadline = time.time() + 240
    while not first.exists():
        assert time.time() < deadline, "the job did not reach step 5"
        assert job_field(job, "JobState") in ("PENDING", "RUNNING", "CONFIGURING"), job_field(job, "JobState")
        time.sleep(0.5)
    # what SLURM sends `signal_delay_s` before the time limit (--signal=USR1@N), sent now
    subprocess.run(["scancel", f"--signal={signal.SIGUSR1.name[3:]}", job], check=True)
    deadline = time.time() + 300
    while job_field(job, "JobState") != "COMPLETED":
        state = job_field(job, "JobState")
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), (work / f"job-{job}.out").read_text()
        assert time.time() < deadline, f"job still {state}"
        time.sleep(1)
    out = (work / f"job-{job}.out").read_text()
    assert job_field(job, "Restarts") == "1"
    assert "requeueing" in out and "resuming from" in out
    ckpt = torch.load(run_dir / "tokenizer" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == steps
    assert sorted(p.name for p in (work / "runs").iterdir()) == [f"slurm-{job}"]  # same run dir after requeue
