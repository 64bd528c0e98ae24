"""Export the EMA weights of a training checkpoint (a ``.ckpt`` file or the sharded folder FSDP writes) into one
small file for evaluation and sampling.

The export keeps the training checkpoint's layout (``hyper_parameters`` + ``state_dict`` with ``net.*`` or
``tokenizer.*`` keys, :mod:`grn.checkpoints.layout`) with the EMA values in place of the live ones, marks itself
with :data:`~grn.checkpoints.layout.EXPORT_KEY`, and drops optimisers, loops, the discriminator, the LPIPS trunk
and the EMA buffers; :func:`~grn.checkpoints.load_generator`, :func:`~grn.checkpoints.load_tokenizer`,
``sample.py``, ``eval.py`` and ``GRNPipeline`` read it like a training checkpoint. Reading a sharded folder needs
no process group, and only the model entries are read (not the optimiser shards), so it runs on one CPU process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from grn.checkpoints.files import load_consolidated
from grn.checkpoints.layout import EXPORT_KEY, prefixes
from grn.io import atomic_torch_save
from grn.models.ema import shadow_key

__all__ = ["export_ema", "weights_only_ema"]


def weights_only_ema(ckpt: dict[str, Any], ema: str | None = "ema1") -> dict[str, Any]:
    """The export of a consolidated checkpoint: the trained network's weights, EMA values substituted (``ema``
    names the generator's EMA; the tokenizer has one; ``None`` keeps the live weights).

    ``ckpt``: ``{"hyper_parameters": {...}, "state_dict": {name: tensor}, ...}``; returns the same layout with
    only the network's ``<prefix>.<param>`` tensors (contiguous CPU copies), ``global_step`` and
    ``EXPORT_KEY: {"ema": ema}``."""
    hp = ckpt["hyper_parameters"]
    prefix, ema_prefix = prefixes(hp, ema)
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
