"""The command line answers a bad input in one line: train.py, sample.py, eval.py and the scripts, each run as a
subprocess, exit with 2 and print exactly one non-empty line, the error (no traceback; ``GRN_DEBUG=1`` shows it).
Config values are validated before any heavy import, so most of these cases cost a Python start-up only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import make_checkpoints  # noqa: E402

from grn.entrypoints.errors import ConfigError, cli_errors  # noqa: E402
from grn.entrypoints.validate import check_eval, check_sampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Tiny real checkpoints (untrained), a truncated and an empty one, and images for region re-generation."""
    folder = tmp_path_factory.mktemp("cli")
    gen, tok = make_checkpoints(folder)
    data = gen.read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "empty.ckpt").write_bytes(b"")
    Image.new("RGB", (32, 32)).save(folder / "init.png")
    Image.new("L", (7, 9), 255).save(folder / "mask.png")
    return {"gen": gen, "tok": tok, "truncated": folder / "truncated.ckpt", "empty": folder / "empty.ckpt",
            "init": folder / "init.png", "mask": folder / "mask.png", "dir": folder}


def cli(files: dict[str, Path], tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    script, *args = [a.format(**files, tmp=tmp_path) for a in args]
    environ = {k: v for k, v in os.environ.items() if k not in ("GRN_DEBUG", "HYDRA_FULL_ERROR", "GRN_RUN_ID")}
    environ.update(GRN_LOG_DIR=str(tmp_path / "runs"), GRN_CACHE_DIR=str(tmp_path / "cache"), **env)
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=300)


def assert_one_line(proc: subprocess.CompletedProcess, pattern: str, prefix: str = "error: ") -> None:
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stdout + proc.stderr)
    assert lines[0].startswith(prefix) and re.search(pattern, lines[0]), lines[0]


CASES = {
    # checkpoints
    "truncated": (["sample.py", "ckpt={truncated}"], r"truncated\.ckpt is unusable: it is truncated or corrupt"),
    "empty": (["sample.py", "ckpt={empty}"], r"empty\.ckpt is unusable: the file is empty"),
    "tokenizer_as_generator": (["sample.py", "ckpt={tok}", "out={tmp}/x.png"],
                               r"is a tokenizer checkpoint, not a generator one: .*tokenizer_ckpt"),
    "missing": (["sample.py", "ckpt={tmp}/nope.ckpt"], r"generator checkpoint not found: .*nope\.ckpt"),
    "no_ckpt": (["sample.py"], r"ckpt is not set"),
    "eval_truncated": (["eval.py", "ckpt={truncated}"], r"truncated\.ckpt is unusable: it is truncated"),
    "train_resume_empty": (["train.py", "task=tokenizer", "ckpt_path={empty}"],
                           r"ckpt_path=.*empty\.ckpt is not a checkpoint: the file is empty"),
    # sample.py inputs
    "float_class": (["sample.py", "ckpt={gen}", "classes=[3.7]"], r"classes\[0\]=3\.7 is invalid: .*integer >= 0"),
    "mask_shape": (["sample.py", "ckpt={gen}", "init={init}", "mask={mask}"],
                   r"mask=.*mask\.png is 7x9 but init=.*init\.png is 32x32"),
    # trainer
    "max_steps_0": (["train.py", "task=tokenizer", "max_steps=0"], r"max_steps=0 is invalid: .*integer >= 1$"),
    "max_steps_-1": (["train.py", "task=tokenizer", "max_steps=-1"], r"max_steps=-1 is invalid: .*max_epochs"),
    # eval
    "num_per_class": (["eval.py", "ckpt={gen}", "eval.num_per_class=-1"], r"eval\.num_per_class=-1 is invalid"),
    "t2iv_frames": (["eval.py", "task=t2v", "ckpt={gen}", "t2iv.frames=6"],
                    r"t2iv\.frames=6 is invalid: clips have 1 \+ 4k frames"),
    # sampler (one validator for all three entry points)
    "cfg_scale": (["eval.py", "ckpt={gen}", "sampler.cfg_scale=-1"], r"sampler\.cfg_scale=-1 is invalid: .*>= 0"),
    "num_steps": (["sample.py", "ckpt={gen}", "sampler.num_steps=0"], r"sampler\.num_steps=0 is invalid"),
    "cfg_interval": (["sample.py", "ckpt={gen}", "sampler.cfg_interval=[0.6,0.4]"],
                     r"sampler\.cfg_interval=\[0\.6, 0\.4\] is invalid: .*0 <= lo <= hi <= 1"),
    "schedule": (["train.py", "task=tokenizer", "sampler.schedule=foo"],
                 r"sampler\.schedule='foo' is invalid: choose one of linear \| cosine"),
    # model, data and training-module keys (by leaf name, wherever a stage's config holds them)
    "data_batch": (["train.py", "task=tokenizer", "data=digits", "data.batch_size=0"],
                   r"stages\.tokenizer\.datamodule\.batch_size=0 is invalid: .*integer >= 1$"),
    "model_lr": (["train.py", "experiment=quickstart", "stages.c2i.lit_module.lr=-0.1"],
                 r"stages\.c2i\.lit_module\.lr=-0\.1 is invalid: .*> 0"),
    "channel_mult": (["train.py", "task=tokenizer", "model.tokenizer.channel_mult=[1,0]"],
                    r"stages\.tokenizer\.lit_module\.tokenizer\.channel_mult\[1\]=0 is invalid"),
    "precision": (["sample.py", "ckpt={gen}", "sampler.precision=fp16"],
                  r"sampler\.precision='fp16' is invalid: choose one of auto \| fp32 \| bf16$"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_entry_point_errors_are_one_line(case, files, tmp_path):
    args, pattern = CASES[case]
    assert_one_line(cli(files, tmp_path, *args), pattern)


SCRIPTS = {
    "cache_text_tokens": (["--tokenizer", "{tmp}/nope.ckpt", "--shards", "{tmp}/s-{{000..001}}.tar",
                           "--text-encoder", "tiny"], r"tokenizer checkpoint not found: .*nope\.ckpt"),
    "cache_tokens": (["--tokenizer", "{tmp}/nope.ckpt", "--builtin", "digits"],
                     r"tokenizer checkpoint not found: .*nope\.ckpt"),
    "convert_official": (["{tmp}/nope.pth", "{tmp}/out.ckpt"], r"official checkpoint not found: .*nope\.pth"),
    "export_ema": (["{tmp}/nope.ckpt", "{tmp}/out.ckpt"], r"nope\.ckpt is not a checkpoint: it does not exist"),
    "fid_stats": (["--folder", "{tmp}/nope", "--out", "{tmp}/x.npz"], r"image folder not found: .*nope"),
    "make_shards": (["folder", "{tmp}/nope", "{tmp}/shards"], r"image folder not found: .*nope"),
    "sweep_table": (["{tmp}/nope.json"], r"nope\.json is neither a JSON file nor a folder"),
    "t2iv_digits_eval": (["{tmp}/nope"], r"run directory not found: .*nope"),
    "tokenizer_ablation": (["--report-only", "--workdir", "{tmp}/nope"], r"no results in .*nope"),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_errors_are_one_line(script, files, tmp_path):
    args, pattern = SCRIPTS[script]
    prefix = "fid_stats: " if script == "fid_stats" else "error: "  # fid_stats keeps its own prefix
    assert_one_line(cli(files, tmp_path, f"scripts/{script}.py", *args), pattern, prefix)


def test_debug_switch_shows_the_traceback_and_hydra_errors_stay_short(files, tmp_path):
    proc = cli(files, tmp_path, "sample.py", "ckpt={gen}", "sampler.cfg_scale=-1", GRN_DEBUG="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    proc = cli(files, tmp_path, "train.py", "sampler.no_such_key=1")  # Hydra's own composition error
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "no_such_key" in proc.stderr


def test_cli_errors_wraps_user_errors_only(capsys, monkeypatch):
    monkeypatch.delenv("GRN_DEBUG", raising=False)

    def fail(err):
        raise err

    for err, line in ((KeyError("checkpoint x has no EMA named 'ema7'"), "checkpoint x has no EMA named 'ema7'"),
                      (FileNotFoundError(2, "No such file or directory", "x.png"), "x.png: No such file or directory"),
                      (SystemExit("sweep_table: no results\n"), "sweep_table: no results"),
                      (ValueError("two\nlines"), "two lines")):
        with pytest.raises(SystemExit) as exit_:
            cli_errors(fail)(err)
        assert exit_.value.code == 2 and capsys.readouterr().err == f"error: {line}\n"
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        cli_errors(fail)(RuntimeError("bug"))
    with pytest.raises(SystemExit) as exit_:  # argparse's own exit status passes through
        cli_errors(fail)(SystemExit(0))
    assert exit_.value.code == 0


@pytest.mark.parametrize("sampler, message", [
    ({"schedule": "complexity_aware", "complexity_warmup_steps": 10, "complexity_min_steps": 10},
     r"complexity_warmup_steps < complexity_min_steps <= complexity_max_steps"),
    ({"schedule": "complexity_aware", "complexity_warmup_steps": 5, "alpha": 4}, r"complexity_warmup_steps < alpha"),
    ({"schedule": "complexity_aware_official", "complexity_min_steps": 60, "num_steps": 50},
     r"complexity_min_steps <= num_steps"),
    ({"snr_shift": 2.0}, r"^sampler\.snr_shift was renamed: use sampler\.keep_prob_shift$"),
    ({"t_max": 40}, r"^sampler\.t_max was renamed: use sampler\.complexity_max_steps$"),
    ({"temperature": "hot"}, r"sampler\.temperature='hot' is invalid"),
    ({"keep_prob_shift": 0}, r"sampler\.keep_prob_shift=0 is invalid: it must be a number > 0"),
    ({"cfg_interval": 0.5}, r"sampler\.cfg_interval=0\.5 is invalid: it must be \[lo, hi\]"),
    ({"selection": "greedy"}, r"choose one of random \| confidence"),
    ({"bit_target": "both"}, r"choose one of null \| absolute \| relative"),
    ({"num_steps": 2.5}, r"num_steps=2\.5 is invalid: it must be an integer"),
    ({"revise": "yes"}, r"sampler\.revise='yes' is invalid: it must be true or false"),
    ({"precision": "16-mixed"}, r"sampler\.precision='16-mixed' is invalid: choose one of auto \| fp32 \| bf16$"),
    ({"i2v_mode": "last"}, r"sampler\.i2v_mode='last' is invalid: choose one of null \| first_frame \| region$"),
])
def test_sampler_ranges(sampler, message):
    with pytest.raises(ConfigError, match=message):
        check_sampler(sampler)


def test_valid_configs_pass():
    from omegaconf import OmegaConf

    for name in ("default", "complexity_official"):
        cfg = OmegaConf.load(ROOT / "conf" / "sampler" / f"{name}.yaml")
        cfg.pop("defaults", None)
        check_sampler(OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "sampler" / "default.yaml"), cfg))
    check_sampler({"temperature": 0, "cfg_scale": 0, "cfg_interval": [0.0, 0.0]})  # argmax, no guidance pass
    for name in ("digits", "imagenet"):
        check_eval(OmegaConf.load(ROOT / "conf" / "eval" / f"{name}.yaml"))
    with pytest.raises(ConfigError, match=r"eval\.batch_size=0 is invalid"):
        check_eval({"batch_size": 0})


def test_every_experiment_and_task_passes_validation(compose_cfg):
    from grn.entrypoints.validate import validate_train

    experiments = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    for overrides in [[f"experiment={e}"] for e in experiments] + [[f"task={t}"] for t in ("tokenizer", "c2i",
                                                                                        "t2i", "t2v")]:
        cfg = compose_cfg("train", [*overrides, "report=true"])
        validate_train(cfg, list(cfg.stages))


@pytest.mark.parametrize("override, message", [
    ("stages.tokenizer.lit_module.ema_decays=[1.5]", r"lit_module\.ema_decays\[0\]=1\.5 is invalid: .*<= 1"),
    ("stages.tokenizer.lit_module.optimizer.betas=[0.5,1.0]",
     r"lit_module\.optimizer\.betas\[1\]=1\.0 is invalid: .*< 1"),
    ("model.tokenizer.dropout=1.0", r"lit_module\.tokenizer\.dropout=1\.0 is invalid: .*< 1"),
    ("model.tokenizer.hbq_rounds=2.5", r"lit_module\.tokenizer\.hbq_rounds=2\.5 is invalid: .*integer"),
    ("data.num_workers=-1", r"datamodule\.num_workers=-1 is invalid: .*>= 0"),
    ("stages.tokenizer.lit_module.gan_weight=nan", r"gan_weight=nan is invalid"),
    ("stages.tokenizer.lit_module.discriminator.num_layers=0", r"discriminator\.num_layers=0 is invalid"),
])
def test_model_and_data_ranges(compose_cfg, override, message):
    """Model, data and optimiser keys are range-checked at start-up, wherever the stage's config nests them."""
    from grn.entrypoints.validate import validate_train

    cfg = compose_cfg("train", ["experiment=quickstart", override])
    with pytest.raises(ConfigError, match=message):
        validate_train(cfg, ["tokenizer"])


@pytest.mark.parametrize("override, message", [
    ("+stages.tokenizer.lit_module.ema_decay=0.99",
     r"^stages\.tokenizer\.lit_module\.ema_decay moved: use stages\.tokenizer\.lit_module\.ema_decays$"),
    ("+stages.tokenizer.lit_module.disc_weight_decay=0.01", r"^stages\.tokenizer\.lit_module\.disc_weight_decay "
     r"moved: use stages\.tokenizer\.lit_module\.disc_optimizer\.weight_decay$"),
    ("+stages.c2i.lit_module.betas=[0.9,0.95]",
     r"^stages\.c2i\.lit_module\.betas moved: use stages\.c2i\.lit_module\.optimizer\.betas$"),
    ("+stages.c2i.lit_module.warmup_steps=10",
     r"^stages\.c2i\.lit_module\.warmup_steps moved: use stages\.c2i\.lit_module\.lr_scheduler\.warmup_steps$"),
    ("stages.c2i.lit_module.optimizer.betas=[0.9,1.5]", r"lit_module\.optimizer\.betas\[1\]=1\.5 is invalid"),
    ("stages.c2i.lit_module.lr_scheduler.warmup_steps=-1", r"lr_scheduler\.warmup_steps=-1 is invalid: .*>= 0"),
])
def test_optimizer_keys_moved_and_nested_ones_are_checked(compose_cfg, override, message):
    from grn.entrypoints.validate import validate_train

    cfg = compose_cfg("train", ["experiment=quickstart", override])
    with pytest.raises(ConfigError, match=message):
        validate_train(cfg, [override.split(".")[1]])  # the stage the override is in


def test_dim_must_split_into_heads():
    from grn.entrypoints.validate import check_numbers

    check_numbers({"net": {"dim": 64, "num_heads": 4}}, "x")
    with pytest.raises(ConfigError, match=r"x\.net\.dim=64 is not a multiple of x\.net\.num_heads=5"):
        check_numbers({"net": {"dim": 64, "num_heads": 5}}, "x")


def test_i2v_keys_are_checked_where_the_stage_nests_them(compose_cfg):
    """``i2v_ratio`` (a share) and the network's ``i2v_mode`` (first_frame | region) at start-up."""
    from grn.entrypoints.validate import validate_train

    for override, message in (("stages.t2v.lit_module.i2v_ratio=1.5", r"lit_module\.i2v_ratio=1\.5 is invalid"),
                              ("model.generator.i2v_mode=both",
                               r"net\.i2v_mode='both' is invalid: choose one of first_frame \| region$")):
        cfg = compose_cfg("train", ["experiment=t2iv_digits", override])
        with pytest.raises(ConfigError, match=message):
            validate_train(cfg, ["t2v"])
    validate_train(compose_cfg("train", ["experiment=t2iv_digits", "stages.t2v.lit_module.i2v_ratio=0.5",
                                         "model.generator.i2v_mode=region"]), ["t2v"])
