"""Two gloo processes, each extracting features for half of the images, give the single-process FID and IS."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    # The two runs extract the same images in other batches (each rank its interleaved share) and other thread
    # counts (the ranks run 1 thread), so the float32 features and logits may differ in their last bits (a few
    # units of u = 6e-8 of their scale; measured 1.5e-8 of FID going from batches of 16 to batches of 1). The
    # float64 sums make the all-reduce itself exact. Tolerances follow the float32 inputs, 1e-5 of each
    # quantity's scale: for FID that is the statistics' scale tr(sigma) + |mu|^2 (FID is a difference of such
    # terms, 0.07 here against a scale of 0.74), for the IS mean and std it is the IS itself (the std of the
    # 3 split scores is ~1e-4, mostly cancellation). An all-reduce that does nothing moves FID by 4e-3 and the
    # IS mean by 3e-5 (asserted below); splits taken by local instead of global index move the IS std by 6e-5.
    mu, sigma = ref_acc.fid.mu_sigma()
    fid_tol = 1e-5 * (np.trace(sigma) + mu @ mu)
    is_tol = 1e-5 * single["inception_score_mean"]

    def agree(result: dict) -> bool:
        return (
            abs(result["fid"] - single["fid"]) <= fid_tol
            and abs(result["inception_score_mean"] - single["inception_score_mean"]) <= is_tol
            and abs(result["inception_score_std"] - single["inception_score_std"]) <= is_tol
        )

    assert agree(both), (both, single)
    assert not agree(w.score(0, 2, weights, ref))  # rank 0's share alone (no process group: no all-reduce)
