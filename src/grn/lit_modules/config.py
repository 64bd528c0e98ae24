"""Config values stored in checkpoints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from grn.checkpoints import check_stored_configs


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


class CheckedLoad:
    """Mixin for LightningModules: ``load_from_checkpoint`` first refuses a file whose stored configs grn would not
    build from a checkpoint (:func:`grn.checkpoints.check_stored_configs`), since Lightning passes them to
    ``__init__``, which instantiates them with Hydra. ``stored_configs``: hyper-parameter name -> allowed kinds."""

    stored_configs: dict[str, set[str]] = {}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        check_stored_configs(checkpoint_path, cls.stored_configs, given=kwargs)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
