"""Send images, histograms and scalars to whichever loggers a trainer has (W&B, TensorBoard, CSV).

Callbacks call these on every rank; the loggers themselves only write on rank 0. A logger that cannot take a kind
of media (CSV and images) is skipped, so one callback works under any logger set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

__all__ = ["callback_dir", "log_histogram", "log_image", "log_scalars"]


def callback_dir(trainer: L.Trainer, out_dir: str | None, name: str) -> Path:
    """``out_dir`` if given, else ``<trainer.default_root_dir>/<name>`` (the stage directory)."""
    return Path(out_dir) if out_dir else Path(trainer.default_root_dir) / name


def log_scalars(trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def log_image(trainer: L.Trainer, key: str, png: Path, step: int) -> None:
    """A PNG already on disk → W&B image / TensorBoard image (CSV has no images)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(png)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            from PIL import Image

            img = np.asarray(Image.open(png).convert("RGB"))
            logger.experiment.add_image(key, img, global_step=step, dataformats="HWC")


def log_histogram(
    trainer: L.Trainer, key: str, step: int, values: Any = None, bars: tuple | None = None
) -> None:
    """A histogram of ``values`` or precomputed ``bars = (heights [n], edges [n + 1])`` → W&B / TensorBoard."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            hist = (
                wandb.Histogram(np_histogram=bars)
                if bars is not None
                else wandb.Histogram(np.asarray(values))
            )
            logger.experiment.log({key: hist, "trainer/global_step": step})
        elif isinstance(logger, TensorBoardLogger) and values is not None:
            logger.experiment.add_histogram(key, np.asarray(values), global_step=step)
        elif isinstance(logger, CSVLogger):
            pass  # scalars only: callers log a summary number separately
