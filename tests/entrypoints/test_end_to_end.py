"""train -> sample -> eval through the real command-line entry points (subprocesses), at a few steps each."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "experiment=quickstart",
    "max_steps=6",
    "stages.tokenizer.val_every=3",
    "stages.tokenizer.lit_module.disc_start=3",  # both GAN phases run
    "stages.c2i.val_every=3",
    "callbacks.model_checkpoint.every_n_train_steps=3",
    "eval.num_per_class=2",
    "sampler.num_steps=3",
    "extras.print_config=false",
]

# slow: one real train.py run (tokenizer + GRN on digits, ~35 s of setup) shared by the CLI tests; make test-slow
pytestmark = pytest.mark.slow


def run(script: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=env["WORKDIR"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{script} {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, full_digits_classifier_file):
    work = tmp_path_factory.mktemp("e2e")
    (work / "cache").mkdir()  # the report's classifier, trained once per test run with the default recipe
    shutil.copyfile(full_digits_classifier_file, work / "cache" / "digits_classifier.pt")
    (work / "cache_mtime").write_text(str((work / "cache" / "digits_classifier.pt").stat().st_mtime_ns))
    env = {
        **os.environ,
        "WORKDIR": str(work),
        "GRN_LOG_DIR": str(work / "runs"),
        "GRN_CACHE_DIR": str(work / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("GRN_RUN_ID", None)
    run("train.py", *FAST, env=env)
    return work, env


def trained_cache_mtime(work: Path) -> int:
    return int((work / "cache_mtime").read_text())


def test_train_writes_checkpoints_report_and_grid(trained):
    work, _ = trained
    run_dir = work / "runs" / "quickstart"
    for stage in ("tokenizer", "c2i"):
        ckpt = torch.load(run_dir / stage / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 6  # the final state, not the last periodic save
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["conditional_accuracy"] <= 1.0
    assert metrics["classifier_val_accuracy"] > 0.9
    assert metrics["tokenizer_psnr"] > 5
    assert metrics["num_images"] == 20 and len(metrics["mean_entropy_per_step"]) == 3
    assert metrics["settings"]["sampler"]["num_steps"] == 3
    grid = Image.open(run_dir / "samples.png")
    assert grid.size == (2 + 2 * 34, 2 + 10 * 34)  # 10 rows (one per digit) of 2 images (2 per class here)
    # the report read the classifier cache it was given (same accuracy, file not rewritten) instead of retraining
    cache = work / "cache" / "digits_classifier.pt"
    cached = torch.load(cache, weights_only=True)["val_accuracy"]
    assert metrics["classifier_val_accuracy"] == pytest.approx(cached, abs=5e-5)  # metrics.json rounds to 4 places
    assert cache.stat().st_mtime_ns == trained_cache_mtime(work)


def test_rerun_resumes_finished_stages(trained):
    work, env = trained
    ckpt = work / "runs" / "quickstart" / "c2i" / "checkpoints" / "last.ckpt"
    before = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    proc = run("train.py", *FAST, "report=false", env=env)
    assert "resuming from" in proc.stdout + proc.stderr
    after = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert after["global_step"] == 6
    assert all(torch.equal(before[k], after["state_dict"][k]) for k in before)


def test_sample_cli_is_deterministic(trained):
    work, env = trained
    ckpt = work / "runs" / "quickstart" / "c2i" / "checkpoints" / "last.ckpt"
    common = [f"ckpt={ckpt}", "classes=[3,3,7]", "sampler.num_steps=3", "sampler.cfg_scale=2.0"]
    run("sample.py", *common, "seed=0", "out=a.png", env=env)
    run("sample.py", *common, "seed=0", "out=b.png", env=env)
    run("sample.py", *common, "seed=1", "out=c.png", env=env)
    a, b, c = ((work / f"{n}.png").read_bytes() for n in "abc")
    assert a == b and a != c
    assert Image.open(work / "a.png").size == (2 + 3 * 34, 2 + 34)


def test_eval_cli_records_every_setting(trained):
    work, env = trained
    ckpt = work / "runs" / "quickstart" / "c2i" / "checkpoints" / "last.ckpt"
    run("eval.py", f"ckpt={ckpt}", "sampler.cfg_scale=2.5", "sampler.num_steps=2", "eval.num_per_class=1", env=env)
    outs = list((ckpt.parent.parent / "eval").glob("metrics-*.json"))
    assert len(outs) == 1
    result = json.loads(outs[0].read_text())
    assert result["num_images"] == 10
    assert result["settings"]["sampler"]["cfg_scale"] == 2.5
    assert result["settings"]["ckpt"] == str(ckpt)
    assert Path(result["settings"]["tokenizer_ckpt"]).is_file()


def test_cli_errors_are_clear(trained):
    work, env = trained
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), f"ckpt={work}/missing.ckpt"],
        cwd=work, env=env, capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "generator checkpoint not found" in proc.stderr + proc.stdout


def test_region_regeneration_through_pipeline_and_cli(trained):
    from grn.datamodules.builtin import load_digits_split
    from grn.pipeline import GRNPipeline

    work, env = trained
    ckpt = work / "runs" / "quickstart" / "c2i" / "checkpoints" / "last.ckpt"
    pipe = GRNPipeline.from_pretrained(ckpt)
    digit = load_digits_split("val")[0][:1]  # [1, 3, 32, 32]
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[..., :, 16:] = True  # regenerate the right half
    out = pipe([7, 7], seed=0, init=digit, mask=mask, num_steps=3, cfg_scale=2.0)
    given = pipe.tokenizer.encode(digit, target="index")
    outside = ~pipe.latent_region(mask).expand_as(out.labels)
    assert torch.equal(out.labels[outside], given.expand_as(out.labels)[outside])  # bit-identical outside
    assert not torch.equal(out.labels[~outside], given.expand_as(out.labels)[~outside])
    # the same through the CLI, with image files
    Image.fromarray(((digit[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(work / "init.png")
    Image.fromarray((mask[0, 0].byte() * 255).numpy()).save(work / "mask.png")
    run("sample.py", f"ckpt={ckpt}", "classes=[7]", "init=init.png", "mask=mask.png", "sampler.num_steps=3",
        "out=regen.png", env=env)
    assert Image.open(work / "regen.png").size == (32, 32)  # a single image is saved without a frame
