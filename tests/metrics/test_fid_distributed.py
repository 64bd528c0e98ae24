"""Two gloo processes, each extracting features for half of the images, give the single-process FID and IS."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grn.metrics.fid import FidIsAccumulator, build_feature_extractor, save_reference_stats

WORKER = Path(__file__).with_name("fid_worker.py")


def _worker_module():
    spec = importlib.util.spec_from_file_location("fid_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_two_process_fid_equals_single_process(tmp_path):
    w = _worker_module()
    weights, ref = str(tmp_path / "tiny.pt"), str(tmp_path / "ref.npz")
    w.write_weights(weights)
    real = w.images(120, seed=0)
    ref_acc = FidIsAccumulator(build_feature_extractor(w.NAME, weights))
    ref_acc.update(real, torch.arange(len(real)))
    save_reference_stats(ref, *ref_acc.fid.mu_sigma())

    out = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), "2", str(tmp_path / "init"), weights, ref, str(out)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    single = w.score(0, 1, weights, ref)  # meanwhile, the same images in this one process
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    both = json.loads(out.read_text())
    assert both["num_images"] == single["num_images"] == 90
    assert single["fid"] > 0.01
    assert both["fid"] == pytest.approx(single["fid"], rel=1e-6)
    assert both["inception_score_mean"] == pytest.approx(single["inception_score_mean"], rel=1e-9)
    assert both["inception_score_std"] == pytest.approx(single["inception_score_std"], rel=1e-6)
