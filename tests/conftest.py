"""Shared fixtures: Hydra composition with the real conf/ tree, isolated run and cache directories."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from grn.entrypoints.common import CONF_DIR

torch.set_num_threads(min(2, os.cpu_count() or 1))
sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers (reference_grn, tiny_nets, script_loader)


@pytest.fixture
def compose_cfg(tmp_path, monkeypatch):
    """compose_cfg(config_name, overrides) -> the composed config, with run/cache dirs under tmp_path and the
    Hydra runtime set so that ``${hydra:...}`` interpolations resolve."""
    monkeypatch.setenv("GRN_LOG_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("GRN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GRN_RUN_ID", raising=False)

    def _compose(config_name: str = "train", overrides: list[str] | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose(config_name, overrides=overrides or [], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "runs" / "test-run")
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
