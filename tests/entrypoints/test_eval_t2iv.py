"""eval.py task=t2i|t2v: the captioned-digits measurement of a T2I / T2V checkpoint (grn.metrics.t2iv_digits),
its JSON and grids, the same numbers as the run-directory script, and one-line errors before any work."""

import json
import shutil
import sys

import pytest
import torch
from PIL import Image

from grn.entrypoints.errors import ConfigError
from grn.entrypoints.eval import run
from grn.lit_modules.t2iv import T2IVLitModule

from script_loader import load_script
from tiny_nets import save_tiny_joint_tokenizer, tiny_t2iv_config, tiny_text_encoder_config

# the digits run's sampler (what scripts/t2iv_digits_eval.py uses; the task configs set the cosine schedule), 2 steps
SAMPLER = ["sampler.num_steps=2", "sampler.cfg_scale=2.0", "sampler.temperature=1.0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_classifier_file):
    """A run directory as train.py experiment=t2iv_digits leaves it (tiny untrained networks: the tests check the
    plumbing and the measurement, not what a model learned) and a digits classifier trained for one epoch."""
    root = tmp_path_factory.mktemp("t2iv_digits")
    tok_path = root / "tokenizer" / "checkpoints" / "last.ckpt"
    cfg = save_tiny_joint_tokenizer(tok_path)
    module = T2IVLitModule(net=tiny_t2iv_config(cfg["latent_dim"], cfg["hbq_rounds"]),
                           text_encoder=tiny_text_encoder_config(), tokenizer_ckpt=str(tok_path),
                           ema_decays=[0.999])
    for stage in ("t2i", "t2v"):  # one text network serves both (a T2IVNet makes images and clips)
        path = root / stage / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    (root / "cache").mkdir()
    shutil.copyfile(digits_classifier_file, root / "cache" / "digits_classifier.pt")
    return root


@pytest.fixture(scope="module")
def script(run_dir, tmp_path_factory):
    """scripts/t2iv_digits_eval.py on a copy of the run directory, with the counts of the tests below."""
    copy = tmp_path_factory.mktemp("script") / "run"
    shutil.copytree(run_dir, copy)
    argv = ["t2iv_digits_eval.py", str(copy), "--per-caption", "1", "--steps", "2", "--i2v-clips", "3",
            "--cache-dir", str(run_dir / "cache")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", argv)
        try:
            load_script("t2iv_digits_eval").main()
        finally:
            torch.set_grad_enabled(True)  # the script switches gradients off for its process
    return copy, json.loads((copy / "t2iv_metrics.json").read_text())


def _eval(compose_cfg, run_dir, task, *overrides):
    cfg = compose_cfg("eval", [f"task={task}", f"ckpt={run_dir}/{task}/checkpoints/last.ckpt",
                               f"eval.classifier_cache={run_dir}/cache/digits_classifier.pt", *SAMPLER,
                               "t2iv.per_caption=1", "t2iv.i2v_clips=3", *overrides])
    out = run(cfg)
    return out, json.loads(out.read_text())


def test_t2i_task_writes_caption_accuracy_and_grid(compose_cfg, run_dir, script):
    out, result = _eval(compose_cfg, run_dir, "t2i")
    assert out.parent == run_dir / "t2i" / "eval" and out.name.startswith("t2i-")
    assert set(result) >= {"t2i", "classifier_val_accuracy", "seconds", "grids", "settings"}
    assert "t2v" not in result and "i2v" not in result
    accuracy, per_digit = result["t2i"]["caption_accuracy"], result["t2i"]["per_digit"]
    assert 0.0 <= accuracy <= 1.0 and len(per_digit) == 10
    assert accuracy == pytest.approx(sum(per_digit) / 10)  # as many images of every digit
    settings = result["settings"]
    assert settings["task"] == "t2i" and settings["sampler"]["num_steps"] == 2 and settings["ema"] == "ema1"
    assert settings["tokenizer_ckpt"] == str(run_dir / "tokenizer" / "checkpoints" / "last.ckpt")  # as recorded
    assert settings["t2iv"]["per_caption"] == 1
    assert result["grids"]["t2i"] == str(out.with_suffix(".png"))
    assert Image.open(result["grids"]["t2i"]).size == (2 + 1 * 34, 2 + 10 * 34)  # per_caption < 5: 1 per row
    # the run-directory script: same checkpoint, sampler and seed -> the same numbers and the same grid
    copy, measured = script
    assert result["t2i"] == measured["t2i"]
    assert result["classifier_val_accuracy"] == measured["classifier_val_accuracy"]
    assert measured["settings"] == {"num_steps": 2, "schedule": "cosine", "cfg_scale": 2.0, "temperature": 1.0,
                                    "per_caption": 1, "seed": 0,  # and the pt value each task sampled with
                                    "t2i_pt_value": "nominal", "t2v_pt_value": "nominal"}
    assert (copy / "t2i_samples.png").read_bytes() == out.with_suffix(".png").read_bytes()


def test_t2v_task_measures_t2v_and_i2v(compose_cfg, run_dir, script):
    out, result = _eval(compose_cfg, run_dir, "t2v")
    t2v, i2v = result["t2v"], result["i2v"]
    assert t2v["clips"] == 40 and i2v["clips"] == 3  # one clip per digit and direction; three real first frames
    assert 0.0 <= t2v["direction_accuracy"] <= 1.0 and 0.0 <= t2v["digit_accuracy"] <= 1.0
    assert i2v["first_frame_labels_identical"] == 1.0  # the first latent frame is held fixed
    assert "t2i" not in result and result["settings"]["task"] == "t2v"
    i2v_png = out.with_name(f"{out.stem}-i2v.png")
    assert result["grids"] == {"t2v": str(out.with_suffix(".png")), "i2v": str(i2v_png)}
    assert Image.open(result["grids"]["t2v"]).size == (2 + 5 * 34, 2 + 10 * 34)  # one clip per digit, 5 frames
    assert Image.open(result["grids"]["i2v"]).size == (2 + 5 * 34, 2 + 3 * 34)
    copy, measured = script
    assert result["t2v"] == measured["t2v"] and result["i2v"] == measured["i2v"]
    assert (copy / "t2v_samples.png").read_bytes() == out.with_suffix(".png").read_bytes()
    assert (copy / "i2v_samples.png").read_bytes() == i2v_png.read_bytes()


@pytest.mark.parametrize("override, message", [
    ("eval.classifier_cache=null", r"task=t2i reads the samples with the digits classifier: set eval\.classifier"),
    ("device=cuda", r"task=t2i runs on the CPU .*: drop device=cuda"),
    ("t2iv.frames=6", r"t2iv\.frames=6 is invalid: clips have 1 \+ 4k frames"),
    ("t2iv.per_caption=0", r"t2iv\.per_caption=0 is invalid"),
])
def test_config_errors_are_one_line_before_any_work(compose_cfg, run_dir, override, message):
    cfg = compose_cfg("eval", ["task=t2i", f"ckpt={run_dir}/t2i/checkpoints/last.ckpt", override])
    with pytest.raises(ConfigError, match=message) as err:
        run(cfg)
    assert "\n" not in str(err.value)
