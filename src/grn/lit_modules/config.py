"""Config values stored in checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def plain_config(cfg: Any) -> Any:
    """DictConfig/ListConfig (also nested in a mapping) -> plain dicts/lists, so that checkpoints holding them load
    with ``torch.load(weights_only=True)``; other values pass through."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return {k: plain_config(v) for k, v in cfg.items()}
    return cfg
