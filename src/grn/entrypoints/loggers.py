"""Experiment loggers for a training stage: CSV, TensorBoard, W&B (offline by default), from ``conf/logger``.

A W&B run id is kept in ``<stage dir>/wandb_id.txt``: the first start writes it, every later start (a resume, a
requeued SLURM job, another rank) reads it back and passes ``id=..., resume="allow"``, so a resumed training run
continues the same W&B run instead of opening a new one. Runs of one ``run_id`` share a W&B ``group``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

__all__ = ["WANDB_ID_FILE", "build_loggers", "wandb_run_id"]

WANDB_ID_FILE = "wandb_id.txt"


def wandb_run_id(stage_dir: str | Path) -> str:
    """The W&B run id of this stage: read from ``<stage_dir>/wandb_id.txt``, or created there exactly once.

    Creation uses ``O_EXCL``, so concurrent ranks agree on one id (the loser reads the winner's).
    """
    path = Path(stage_dir) / WANDB_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass  # another rank (or a concurrent start) won the race
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(4) + "\n")  # W&B ids: short, [a-z0-9]
                f.flush()
                os.fsync(f.fileno())
    run_id = path.read_text().strip()
    if not run_id:
        raise ValueError(f"{path} is empty: delete it to start a new W&B run, or write the id to continue")
    return run_id


def _is_wandb(conf: DictConfig) -> bool:
    return str(conf.get("_target_", "")).endswith("WandbLogger")


def build_loggers(cfg: DictConfig, stage: str, stage_dir: str | Path) -> list[Any]:
    """Instantiate every logger of ``cfg.logger`` for ``stage`` (``None`` entries are switched off)."""
    loggers = []
    for conf in (cfg.get("logger") or {}).values():
        if conf is None:
            continue
        extra: dict[str, Any] = {"name": stage}
        if _is_wandb(conf):
            extra.update(id=wandb_run_id(stage_dir), resume="allow")
            if conf.get("group") is None:
                extra["group"] = Path(cfg.paths.run_dir).name  # the run id: stages of one run side by side
        loggers.append(instantiate(conf, **extra))
    return loggers
