"""The evaluation protocol as a library (grn.metrics.protocol, grn.metrics.distributed): class-balanced batches
that do not depend on the world size, per-rank sums and the gathered grid across two gloo processes, the one
metric-naming rule, the settings digest and the default result path."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from grn.metrics.distributed import all_reduce, gather_grid, init_distributed
from grn.metrics.protocol import balanced_batches, eval_path, metric_name, settings_digest
from grn.sampling.config import SamplerConfig

sys.path.insert(0, str(Path(__file__).parent))
from protocol_worker import share  # noqa: E402

WORKER = Path(__file__).with_name("protocol_worker.py")


def test_balanced_batches_cover_every_index_once_whatever_the_world_size():
    one = balanced_batches(10, 5, 8)
    assert [b for b, _ in one] == list(range(7))
    for world in (2, 3):
        parts = [balanced_batches(10, 5, 8, r, world) for r in range(world)]
        merged = sorted((b, tuple(i.tolist())) for p in parts for b, i in p)
        assert merged == [(b, tuple(i.tolist())) for b, i in one]  # same batches, same seeds (seed + b)
    classes = torch.cat([i for _, i in one]) // 5
    assert torch.equal(torch.bincount(classes), torch.full((10,), 5))


def test_balanced_batches_go_round_robin_and_a_rank_may_get_none():
    parts = [[b for b, _ in balanced_batches(10, 3, 4, r, 3)] for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4, 7], [2, 5]]  # batch b on rank b % world
    assert balanced_batches(2, 1, 4, rank=1, world=2) == []  # more ranks than batches: nothing to do
    (b, index), = balanced_batches(2, 1, 4)
    assert b == 0 and index.dtype == torch.int64 and index.tolist() == [0, 1]


def test_reductions_are_identities_in_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") == (0, 1, "cpu")
    t = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert all_reduce(t) is t and t.tolist() == [1.0, 2.0]
    images, classes = gather_grid([torch.full((2, 1, 1, 1), 7.0), torch.zeros(1, 1, 1, 1)],
                                  [torch.tensor([3, 1]), torch.tensor([1])], world=1)
    assert classes.tolist() == [1, 1, 3] and images.flatten().tolist() == [7.0, 0.0, 7.0]  # stable by class
    images, classes = gather_grid([], [], world=1)
    assert images.numel() == 0 and classes.dtype == torch.long


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_two_ranks_sum_and_gather_what_one_process_computes(tmp_path):
    out, port = tmp_path / "two.json", _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), "2", port, str(out)], env=env,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    single = share(0, 1)  # meanwhile, all batches in this one process
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    two = json.loads(out.read_text())
    assert two["batches_by_rank"] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert two["counts"] == single["counts"] == [3.0] * 10  # every class exactly num_per_class times
    assert two["classes"] == single["classes"] == [c for c in range(10) for _ in range(2)]
    assert sorted(two["images"]) == sorted(single["images"])  # every kept image, whichever rank made it
    assert all(int(i) // 3 == c for i, c in zip(two["images"], two["classes"]))  # each beside its class
    assert single["images"][::2] == [3.0 * c for c in range(10)]  # one process: stable, in index order


def test_metric_name_marks_the_digits_stand_in_only():
    assert metric_name("fid", "grn-digits") == "digits_fid"
    assert metric_name("inception_score_std", "grn-digits") == "digits_inception_score_std"
    assert metric_name("rfid", "grn-digits") == "digits_rfid"
    assert metric_name("fid", "inception-v3-compat") == "fid"
    assert metric_name("is", None) == "is"


def test_step_count_is_t_max_only_for_complexity_aware_sampling():
    """The evaluation's histogram size is the sampler config's max-steps rule (one copy of it)."""
    def step_count(s):
        return SamplerConfig.build(s).max_steps

    assert step_count({"schedule": "linear", "num_steps": 7, "complexity_max_steps": 40}) == 7
    assert step_count({"schedule": "complexity_aware", "num_steps": 7, "complexity_max_steps": 40}) == 40
    assert step_count({}) == 50


def test_settings_digest_names_one_file_per_setting(tmp_path):
    settings = {"seed": 0, "sampler": {"cfg_scale": 2.0, "num_steps": 2}, "ckpt": "/x/c2i/checkpoints/last.ckpt"}
    reordered = {"ckpt": settings["ckpt"], "sampler": {"num_steps": 2, "cfg_scale": 2.0}, "seed": 0}
    digest = settings_digest(settings)
    assert len(digest) == 10 and digest == settings_digest(reordered)
    assert digest == "bc0390e27b"  # the names eval.py has always written: results of earlier runs keep their file
    assert settings_digest({**settings, "seed": 1}) != digest
    ckpt = tmp_path / "run" / "c2i" / "checkpoints" / "last.ckpt"
    path = eval_path(ckpt, "metrics", settings)
    assert path == (tmp_path / "run" / "c2i" / "eval" / f"metrics-{digest}.json").resolve()
    assert eval_path(ckpt, "recon", settings).name == f"recon-{digest}.json"


def test_the_library_imports_no_training_modules_nor_entry_points():
    """Not even indirectly: the sampler of the T2I/T2V measurement is passed in (TextModel.sample)."""
    code = ("import sys\n"
            "import grn.metrics.protocol, grn.metrics.distributed, grn.metrics.c2i, grn.metrics.t2iv_digits\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('grn.lit_modules', 'grn.entrypoints')))\n"
            "assert not bad, bad\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
