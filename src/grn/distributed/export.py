"""Checkpoints for evaluation and sampling: read any training checkpoint (a ``.ckpt`` file, or the sharded folder
FSDP writes) as one dict, and export the EMA weights alone into one small file.

The export keeps the training checkpoint's layout (``hyper_parameters`` + ``state_dict`` with ``net.*`` or
``tokenizer.*`` keys) with the EMA values in place of the live ones, and drops optimisers, loops, the
discriminator, the LPIPS trunk and the EMA buffers; ``load_generator``, ``TokenizerLitModule.load_tokenizer``,
``sample.py``, ``eval.py`` and ``GRNPipeline`` read it like a training checkpoint. Reading a sharded folder needs
no process group, and only the model entries are read (not the optimiser shards), so it runs on one CPU process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from grn.entrypoints.common import checkpoint_problem
from grn.io import atomic_torch_save, require_checkpoint_file
from grn.models.ema import shadow_key

__all__ = ["EXPORT_KEY", "export_ema", "load_consolidated", "weights_only_ema"]

EXPORT_KEY = "grn_export"  # present (with the EMA's name) in exported files: their weights are final


def load_consolidated(path: str | os.PathLike, include_optimizer: bool = False) -> dict[str, Any]:
    """A training checkpoint as one dict of CPU tensors, from a file or a sharded (DCP) folder.

    For a folder, ``state_dict`` is assembled from all shards; optimiser states are read only with
    ``include_optimizer`` (under their DCP names ``optimizer_0``, ...)."""
    path = Path(path)
    if path.is_file():
        return torch.load(require_checkpoint_file(path), map_location="cpu", weights_only=True)
    problem = checkpoint_problem(path)
    if problem:
        raise FileNotFoundError(f"{path} is not a checkpoint: {problem} (give a .ckpt file or a complete sharded "
                                "checkpoint folder)")
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    ckpt = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
    state: dict[str, Any] = {}
    keys = None if include_optimizer else {"state_dict"}
    _load_state_dict(
        state, storage_reader=FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True
    )
    ckpt.update(state)
    return ckpt


def _layout(hp: dict[str, Any], ema: str | None) -> tuple[str, str]:
    """``(network prefix, EMA prefix)`` of a GeneratorLitModule or TokenizerLitModule checkpoint."""
    if "net" in hp:
        return "net.", f"emas.{ema or 'ema1'}."
    if "tokenizer" in hp:
        return "tokenizer.", "ema."
    raise ValueError("not a GRN training checkpoint: hyper_parameters has neither 'net' nor 'tokenizer'")


def weights_only_ema(ckpt: dict[str, Any], ema: str | None = "ema1") -> dict[str, Any]:
    """The export of a consolidated checkpoint: the trained network's weights, EMA values substituted (``ema``
    names the generator's EMA; the tokenizer has one; ``None`` keeps the live weights)."""
    hp = ckpt["hyper_parameters"]
    prefix, ema_prefix = _layout(hp, ema)
    state = ckpt["state_dict"]
    weights = {k: v for k, v in state.items() if k.startswith(prefix)}
    if ema is not None:
        replaced = 0
        for key in weights:
            shadow = ema_prefix + shadow_key(key[len(prefix) :])
            if shadow in state:
                weights[key] = state[shadow].to(weights[key].dtype)
                replaced += 1
        if not replaced:
            raise KeyError(f"the checkpoint has no EMA under {ema_prefix!r}")
    return {
        "hyper_parameters": hp,
        "state_dict": {k: v.detach().clone().contiguous() for k, v in weights.items()},
        "global_step": ckpt.get("global_step"),
        EXPORT_KEY: {"ema": ema},
    }


def export_ema(src: str | os.PathLike, dst: str | os.PathLike, ema: str | None = "ema1") -> Path:
    """Read ``src`` (file or sharded folder) and write its EMA weights to ``dst`` atomically; returns ``dst``."""
    return atomic_torch_save(weights_only_ema(load_consolidated(src), ema=ema), dst)
