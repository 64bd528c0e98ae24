"""Shared start-up for the entry points: config location, resolvers, run ids, warnings, stale temporary files."""

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
        # train.py makes map-style loaders resumable (grn.distributed.data_order); ExactResume warns where it cannot
        ".*resuming from a checkpoint that ended before the epoch ended.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete (and log) what interrupted atomic checkpoint writes left in ``folder``; at start-up only."""
    from grn.io import remove_stale_temp_files as remove

    removed = remove(folder) if Path(folder).is_dir() else []
    for path in removed:
        log.warning("removed %s: the temporary file of an interrupted checkpoint write", path)
    return removed


register_resolvers()
