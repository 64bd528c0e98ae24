"""The evaluation protocol shared by ``eval.py``, the training report and the FID/IS callback.

* :func:`balanced_batches`: this rank's batches of the class-balanced sample list (batch ``b`` on rank
  ``b % world``, seeded ``seed + b`` by the caller), so the image set does not depend on the world size;
* :func:`metric_name`: the one place that names a feature-extractor metric (the ``grn-digits`` stand-in's numbers
  carry a ``digits_`` prefix, so they are never mistaken for Inception FID / IS);
* :func:`settings_record`, :func:`settings_digest`, :func:`eval_path`: every setting that produced a result, its
  digest, and the JSON path ``<ckpt dir>/../eval/<kind>-<digest>.json`` (one file per setting).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from grn.metrics.names import DIGITS_EXTRACTOR_NAME

__all__ = [
    "balanced_batches",
    "eval_path",
    "metric_name",
    "settings_digest",
    "settings_record",
    "task_overrides",
]


def balanced_batches(num_classes: int, num_per_class: int, batch_size: int, rank: int = 0, world: int = 1):
    """This rank's batches of the class-balanced list ``[0]*n, [1]*n, ...``: ``[(b, global_index int64 [B])]``.

    Batch ``b`` goes to rank ``b % world``; the union over ranks is every index exactly once.
    """
    total = num_classes * num_per_class
    starts = range(0, total, batch_size)
    return [
        (b, torch.arange(s, min(s + batch_size, total))) for b, s in enumerate(starts) if b % world == rank
    ]


def metric_name(name: str, feature_extractor: str | None) -> str:
    """The key of a metric computed through ``feature_extractor`` (``fid``, ``inception_score``, ``rfid``, ``is``):
    ``digits_<name>`` for the ``grn-digits`` stand-in, else ``name``."""
    return f"digits_{name}" if feature_extractor == DIGITS_EXTRACTOR_NAME else name


def task_overrides() -> list[str]:
    """The command-line overrides of this (Hydra) job, e.g. ``model/generator=small`` of a training sweep."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    try:
        return [str(o) for o in HydraConfig.get().overrides.task]
    except Exception:  # noqa: BLE001 - a partial Hydra config (tests, API use) simply records none
        return []


def settings_record(
    ckpt: str, tokenizer_ckpt: str | None, ema: str | None, sampler: dict, seed: int, eval_cfg
) -> dict:
    """Every setting of a generator evaluation: checkpoints, EMA, seed, sampler, the ``eval`` config, overrides."""
    return {
        "ckpt": str(Path(ckpt).resolve()),
        "tokenizer_ckpt": str(tokenizer_ckpt) if tokenizer_ckpt else None,
        "ema": ema,
        "seed": seed,
        "sampler": sampler,
        "eval": OmegaConf.to_container(eval_cfg, resolve=True),
        "overrides": task_overrides(),
    }


def settings_digest(settings: dict) -> str:
    """10 hex digits of the sha256 of the settings (key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def eval_path(ckpt: str | Path, kind: str, settings: dict) -> Path:
    """Where a result goes by default: ``<ckpt dir>/../eval/<kind>-<digest of settings>.json``."""
    return Path(ckpt).resolve().parent.parent / "eval" / f"{kind}-{settings_digest(settings)}.json"
