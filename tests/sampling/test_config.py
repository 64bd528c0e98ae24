"""SamplerConfig: the one typed sampler config (keys and defaults of conf/sampler/default.yaml, unknown keys
rejected, the max-steps rule) and grn.sampling's place below lit_modules / entrypoints / Lightning."""

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from grn.sampling.config import SAMPLER_DEFAULTS, SAMPLER_KEYS, SamplerConfig

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_equal_the_config_file():
    yaml = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "sampler" / "default.yaml"))
    assert SAMPLER_DEFAULTS == yaml
    assert SamplerConfig().to_dict() == yaml
    assert SamplerConfig.build(yaml) == SamplerConfig()
    assert set(SAMPLER_KEYS) == set(yaml)


def test_unknown_key_is_rejected_in_one_line():
    with pytest.raises(ValueError, match="unknown key.*cfg_scal\\b") as err:
        SamplerConfig.build({"cfg_scal": 2.0})
    assert "\n" not in str(err.value) and "cfg_scale" in str(err.value)
    with pytest.raises(ValueError, match="unknown key"):
        SamplerConfig().replace(steps=3)


@pytest.mark.parametrize("schedule,expected", [("linear", 30), ("cosine", 30), ("complexity_aware", 40),
                                               ("complexity_aware_official", 30)])
def test_max_steps_rule(schedule, expected):
    assert SamplerConfig.build({"schedule": schedule, "num_steps": 30, "complexity_min_steps": 10, "complexity_max_steps": 40}).max_steps == expected


def test_built_from_hydra_and_typed():
    cfg = SamplerConfig.build(OmegaConf.create({"cfg_interval": [0.4, 1.0], "num_steps": 10.0, "alpha": 50}),
                              cfg_scale=2)
    assert cfg.cfg_interval == (0.4, 1.0) and cfg.num_steps == 10 and isinstance(cfg.num_steps, int)
    assert isinstance(cfg.cfg_scale, float) and isinstance(cfg.alpha, float)
    assert SamplerConfig.build(cfg) is cfg
    assert "seed" not in cfg.refine_options() and "precision" not in cfg.refine_options()
    with pytest.raises(ValueError, match="schedule"):
        SamplerConfig(schedule="cosin")
    with pytest.raises(ValueError, match="cfg_interval"):
        SamplerConfig(cfg_interval=(0.5, 0.2))
    with pytest.raises(ValueError, match="num_steps"):
        SamplerConfig(num_steps=2.5)


def test_sampling_sits_below_training_and_the_pipelines_share_one_output_type():
    """grn.sampling imports no lit_modules, entrypoints or Lightning; text_pipeline does not import pipeline."""
    code = ("import sys, grn.sampling, grn.sampling.config, grn.sampling.entry, grn.sampling.text\n"
            "bad = [m for m in sys.modules if m.startswith(('grn.lit_modules', 'grn.entrypoints', 'lightning',"
            " 'pytorch_lightning'))]\n"
            "assert not bad, bad\n"
            "import grn.text_pipeline\n"
            "assert 'grn.pipeline' not in sys.modules\n"
            "import grn.pipeline, grn.pipeline_output\n"
            "assert grn.pipeline.PipelineOutput is grn.pipeline_output.PipelineOutput\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_start_up_check_agrees_on_keys():
    from grn.entrypoints.errors import ConfigError
    from grn.entrypoints.validate import check_sampler

    with pytest.raises(ConfigError) as err:
        check_sampler({"cfg_scal": 2.0})
    with pytest.raises(ValueError) as same:
        SamplerConfig.build({"cfg_scal": 2.0})
    assert str(err.value) == str(same.value)
    check_sampler(SamplerConfig().to_dict())


def test_renamed_keys_are_rejected_in_config_and_migrated_from_stored_hparams():
    from grn.sampling.config import RENAMED_KEYS, migrate_keys

    for old, new in RENAMED_KEYS.items():
        with pytest.raises(ValueError, match=rf"^sampler\.{old} was renamed: use sampler\.{new}$"):
            SamplerConfig.build({old: 7})
        assert new in SAMPLER_KEYS
    stored = {"snr_shift": 3.0, "t_min": 12, "t_max": 30, "warmup_steps": 4, "num_steps": 9}
    cfg = SamplerConfig.build(migrate_keys(stored))
    assert (cfg.keep_prob_shift, cfg.complexity_min_steps, cfg.complexity_max_steps, cfg.complexity_warmup_steps,
            cfg.num_steps) == (3.0, 12, 30, 4, 9)
