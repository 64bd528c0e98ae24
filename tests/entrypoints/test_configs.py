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


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(compose_cfg, experiment):
    cfg = compose_cfg("train", [f"experiment={experiment}"])
    assert cfg.stages, experiment
    instantiate_stages(cfg)


@pytest.mark.parametrize("task", ["tokenizer", "c2i"])
def test_task_composes_and_instantiates(compose_cfg, task):
    extra = ["stages.tokenizer.lit_module.lpips.allow_random_backbone=true"] if task == "tokenizer" else []
    cfg = compose_cfg("train", [f"task={task}", *extra])
    assert list(cfg.stages) == [task]
    instantiate_stages(cfg)


def test_real_tokenizer_config_names_missing_vgg_weights(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cfg = compose_cfg("train", ["task=tokenizer"])
    with pytest.raises(Exception, match="vgg16-397923af.pth"):
        instantiate(cfg.stages.tokenizer.lit_module)


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_configs_build(compose_cfg, name):
    cfg = compose_cfg("train", [f"model/generator={name}"])
    with torch.device("meta"):
        net = instantiate(cfg.model.generator)
    assert net.num_classes == cfg.model.generator.num_classes


@pytest.mark.parametrize("name", TOKENIZERS)
def test_tokenizer_configs_build(compose_cfg, name):
    cfg = compose_cfg("train", [f"model/tokenizer={name}"])
    with torch.device("meta"):
        tok = instantiate(cfg.model.tokenizer)
    assert tok.latent_dim == cfg.model.tokenizer.latent_dim


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
    with pytest.raises(ConfigError, match="does not exist"):
        validate(cfg)
    assert validate(compose_cfg("train", ["experiment=quickstart"])) == ["tokenizer", "c2i"]
