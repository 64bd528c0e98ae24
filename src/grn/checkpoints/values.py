"""Config values as checkpoints store them: plain dicts, lists and strings, so that a checkpoint holding them loads
with ``torch.load(weights_only=True)`` (no OmegaConf or Path objects to unpickle). Pure; no Lightning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["plain_config", "plain_hparams"]


def plain_config(cfg: Any) -> Any:
    """DictConfig/ListConfig (also nested in a mapping) -> plain dicts/lists, so that checkpoints holding them load
    with ``torch.load(weights_only=True)``; other values pass through."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return {k: plain_config(v) for k, v in cfg.items()}
    return cfg


def plain_hparams(*values: Any) -> tuple[Any, ...]:
    """Constructor arguments as checkpoint-safe values, in order: configs become plain dicts, sequences (tuples,
    ListConfigs) lists, paths strings, and empty paths None."""
    out = []
    for v in values:
        v = plain_config(v)
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, Sequence) and not isinstance(v, str):
            v = list(v)
        elif isinstance(v, str) and not v:
            v = None
        out.append(v)
    return tuple(out)
