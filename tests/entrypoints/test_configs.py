"""Every experiment, task and model config composes and instantiates; bad configs fail early with one line."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from grn.entrypoints.common import CONF_DIR
from grn.entrypoints.train import ConfigError, validate

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
GENERATORS = sorted(p.stem for p in (Path(CONF_DIR) / "model" / "generator").glob("*.yaml"))
TOKENIZERS = sorted(p.stem for p in (Path(CONF_DIR) / "model" / "tokenizer").glob("*.yaml"))


def instantiate_stages(cfg):
    for name, stage in cfg.stages.items():
        module = instantiate(stage.lit_module)
        assert isinstance(module, torch.nn.Module), name
        datamodule = instantiate(stage.datamodule)
        assert hasattr(datamodule, "train_dataloader"), name
        instantiate(cfg.trainer, max_steps=1, logger=False, enable_checkpointing=False)


IMAGENET = {f"c2i_grn_{k}_in256" for k in "blhg"}  # the paper's C2I runs: real shards and GPUs not needed here
FULL_SIZE = {
    "tokenizer_image_f16d16",
    "tokenizer_joint_f16t4d64",
    "tokenizer_official_f16d16",
    "tokenizer_official_f16t4d64",
} | IMAGENET  # meta device, LPIPS stand-in


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(compose_cfg, experiment):
    extra = ["stages.tokenizer.lit_module.lpips.allow_random_backbone=true"] if experiment in FULL_SIZE else []
    if experiment in IMAGENET:
        extra = ["data.train_shards='/data/in/train-{000000..000009}.tar'", "trainer=cpu"]
    if experiment == "t2iv_official":  # the official toy data layout under the official repo root
        extra = ["data.root=/data/GRN"]
    cfg = compose_cfg("train", [f"experiment={experiment}", *extra])
    assert cfg.stages, experiment
    with torch.device("meta" if experiment in FULL_SIZE else "cpu"):
        instantiate_stages(cfg)


SMALL_T2IV = ["model/generator=t2iv_tiny", "model/tokenizer=tiny_joint", "model/text_encoder=tiny"]


@pytest.mark.parametrize("task", ["tokenizer", "c2i", "t2i", "t2v"])
def test_task_composes_and_instantiates(compose_cfg, task):
    extra = {"tokenizer": ["stages.tokenizer.lit_module.lpips.allow_random_backbone=true"],
             "t2i": SMALL_T2IV, "t2v": SMALL_T2IV}.get(task, [])
    cfg = compose_cfg("train", [f"task={task}", *extra])
    assert list(cfg.stages) == [task]
    instantiate_stages(cfg)


def test_real_tokenizer_config_names_missing_vgg_weights(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cfg = compose_cfg("train", ["task=tokenizer"])
    with pytest.raises(Exception, match="vgg16-397923af.pth"):
        instantiate(cfg.stages.tokenizer.lit_module)


@pytest.mark.parametrize("size", ["b", "l", "h", "g"])
def test_imagenet_c2i_experiments_carry_the_paper_settings(compose_cfg, size):
    cfg = compose_cfg("train", [f"experiment=c2i_grn_{size}_in256"])
    lit = cfg.stages.c2i.lit_module
    assert cfg.model.generator.size == f"grn_{size}" and cfg.model.tokenizer.latent_dim == 16
    assert lit.blr == 5e-5 and list(lit.ema_decays) == [0.9999, 0.9996] and lit.grad_clip == 0.1
    assert cfg.data.image_size == 256 and cfg.data.batch_size * 8 == 1024
    assert cfg.stages.c2i.tokenizer_ckpt.endswith("HBQ_image_tokenizer_16dim_M4.ckpt")
    assert cfg.sampler.num_steps == 50 and cfg.trainer.precision == ("bf16-mixed" if size in "bl" else "32-true")


@pytest.mark.parametrize("task", ["t2i", "t2v"])
def test_text_tasks_use_the_paper_settings_and_name_missing_umt5(compose_cfg, task, tmp_path, monkeypatch):
    monkeypatch.setenv("GRN_WEIGHTS_DIR", str(tmp_path / "weights"))
    cfg = compose_cfg("train", [f"task={task}"])
    assert cfg.model.generator.size == "grn2b" and cfg.model.text_encoder.max_length == 512
    assert cfg.sampler.schedule == "cosine" and cfg.stages[task].lit_module.keep_prob_shift == 4.0
    assert cfg.sampler.cfg_scale == (3.0 if task == "t2i" else 4.0)
    with pytest.raises(Exception, match="models_t5_umt5-xxl-enc-bf16.pth") as err:  # Hydra wraps the error
        instantiate(cfg.model.text_encoder)
    cause = err.value.__cause__ or err.value
    assert isinstance(cause, FileNotFoundError) and "\n" not in str(cause)


# every model config builds (on meta) into a network that carries its config's defining size
@pytest.mark.parametrize(("group", "name", "attr"), [("generator", n, "num_classes") for n in GENERATORS]
                         + [("tokenizer", n, "latent_dim") for n in TOKENIZERS])
def test_model_configs_build(compose_cfg, group, name, attr):
    cfg = compose_cfg("train", [f"model/{group}={name}"])
    with torch.device("meta"):
        net = instantiate(cfg.model[group])
    assert getattr(net, attr) == cfg.model[group][attr]


@pytest.mark.parametrize("config_name", ["sample", "eval"])
def test_cli_configs_compose(compose_cfg, config_name):
    cfg = compose_cfg(config_name, ["ckpt=x.ckpt", "sampler.cfg_scale=2.0", "sampler.cfg_interval=[0.4,1.0]"])
    assert cfg.sampler.cfg_scale == 2.0 and list(cfg.sampler.cfg_interval) == [0.4, 1.0]
    assert set(cfg.sampler) >= {"num_steps", "cfg_scale", "cfg_interval", "temperature", "schedule", "seed"}


def test_validation_errors_are_one_line(compose_cfg, tmp_path):
    cfg = compose_cfg("train", ["task=c2i", f"stages.c2i.tokenizer_ckpt={tmp_path}/none.ckpt"])
    with pytest.raises(ConfigError, match="needs a trained tokenizer") as err:
        validate(cfg)
    assert "\n" not in str(err.value)
    cfg = compose_cfg("train", ["experiment=quickstart", "run_stages=[t2v]"])
    with pytest.raises(ConfigError, match="does not define"):
        validate(cfg)
    cfg = compose_cfg("train", ["experiment=quickstart", f"ckpt_path={tmp_path}/missing.ckpt"])
    with pytest.raises(ConfigError, match="is not a checkpoint"):
        validate(cfg)
    assert validate(compose_cfg("train", ["experiment=quickstart"])) == ["tokenizer", "c2i"]
