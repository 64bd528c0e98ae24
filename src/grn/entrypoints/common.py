"""Shared start-up for the entry points: config location, resolvers, run ids, checkpoint discovery."""

from __future__ import annotations

import logging
import os
import secrets
import time
import warnings
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger("grn")

CONF_DIR = str(Path(os.environ.get("GRN_CONF_DIR", Path(__file__).resolve().parents[3] / "conf")))


def run_id(given: str | None = None) -> str:
    """A stable run id: the given one, else $GRN_RUN_ID, else the SLURM job (and array task), else a fresh
    ``<date>_<time>-<random>``. The chosen id is exported as $GRN_RUN_ID so that child processes (DDP ranks
    re-executing the command line) resolve the same run directory."""
    if given not in (None, "", "None", "null"):
        rid = str(given)
    elif os.environ.get("GRN_RUN_ID"):
        rid = os.environ["GRN_RUN_ID"]
    elif os.environ.get("SLURM_JOB_ID"):
        job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ["SLURM_JOB_ID"]
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        rid = f"slurm-{job}" + (f"_{task}" if task else "")
    else:
        rid = time.strftime("%Y%m%d_%H%M%S") + "-" + secrets.token_hex(2)
    os.environ["GRN_RUN_ID"] = rid
    return rid


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("grn.run_id"):
        OmegaConf.register_new_resolver("grn.run_id", run_id, use_cache=True)


def quiet_warnings() -> None:
    """Silence start-up chatter that says nothing about this run (hardware banners, tips, deprecations inside
    Lightning); warnings about the run itself still show."""
    for pattern in (
        ".*does not have many workers.*",
        ".*The number of training batches.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*Using ModelCheckpoint with manual optimization.*",  # GAN stages: the state after the step is intended
        # train.py makes map-style loaders resumable (grn.distributed.sampler); ExactResume warns where it cannot
        ".*resuming from a checkpoint that ended before the epoch ended.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (one phrase), or None. A ``.ckpt`` file must pass
    :func:`grn.io.checkpoint_file_problem` (its zip directory is read, no tensor); a sharded
    (torch.distributed.checkpoint) folder must hold shards, ``.metadata`` and ``meta.pt`` written in that order. A
    save writes them in that order, so a folder with a missing or older ``.metadata`` / ``meta.pt`` is an
    interrupted save (also when it overwrote an older one)."""
    from grn.io import checkpoint_file_problem

    path = Path(path)
    if path.is_file():
        return checkpoint_file_problem(path)
    if not path.is_dir():
        return "it does not exist"
    metadata, meta = path / ".metadata", path / "meta.pt"
    if not (metadata.is_file() and meta.is_file()):
        return "an interrupted sharded save (no .metadata or meta.pt)"
    written = metadata.stat().st_mtime_ns
    shards_before = all(p.stat().st_mtime_ns <= written for p in path.glob("*.distcp"))
    if not (shards_before and meta.stat().st_mtime_ns >= written):
        return "an interrupted sharded save (shards newer than its .metadata / meta.pt)"
    return None


def is_checkpoint(path: str | Path) -> bool:
    """A complete checkpoint: a ``.ckpt`` file or sharded folder (see :func:`checkpoint_problem`)."""
    return checkpoint_problem(path) is None


def newest_checkpoint(folder: str | Path) -> Path | None:
    """``last.ckpt`` if complete, else the most recently written complete ``*.ckpt`` (file or sharded folder)
    under ``folder``, else None. Each incomplete one passed over is logged with the reason."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    last = folder / "last.ckpt"
    others = sorted((p for p in folder.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in [last, *others] if last.exists() else others:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("ckpt_path=auto: skipping %s: %s", path, problem)
    return None


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete (and log) what interrupted atomic checkpoint writes left in ``folder``; at start-up only."""
    from grn.io import remove_stale_temp_files as remove

    removed = remove(folder) if Path(folder).is_dir() else []
    for path in removed:
        log.warning("removed %s: the temporary file of an interrupted checkpoint write", path)
    return removed


register_resolvers()
