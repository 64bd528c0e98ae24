"""eval.py under torchrun (2 gloo ranks) gives the single-process metrics on the same images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import make_checkpoints  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_torchrun_two_ranks_equals_one(tmp_path):
    gen, _ = make_checkpoints(tmp_path)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GRN_CACHE_DIR": str(tmp_path / "cache"),
        "GRN_LOG_DIR": str(tmp_path / "runs"),
    }
    common = [
        f"ckpt={gen}",
        "eval.num_per_class=3",
        "eval.batch_size=4",
        "sampler.num_steps=2",
        "eval.data=null",
        "eval.fid.build_reference=false",
        f"eval.fid.reference_stats={tmp_path}/ref.npz",
    ]
    # reference statistics: built once by a plain run with build_reference (then both runs read the same file)
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval.py"),
            f"ckpt={gen}",
            "eval.num_per_class=1",
            f"eval.fid.reference_stats={tmp_path}/ref.npz",
            f"out={tmp_path}/warm.json",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    one = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), *common, f"out={tmp_path}/one.json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29533",
            str(ROOT / "eval.py"),
            *common,
            f"out={tmp_path}/two.json",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert b["world_size"] == 2 and a["world_size"] == 1 and a["num_images"] == b["num_images"] == 30
    for key in ("digits_fid", "digits_inception_score", "conditional_accuracy", "mean_steps"):
        assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert a["conditional_accuracy_per_class"] == b["conditional_accuracy_per_class"]
