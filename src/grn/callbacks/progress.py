"""A rich progress bar that counts optimiser steps against ``max_steps`` (GRN stages are step-based, not
epoch-based), instead of restarting every epoch."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """``<stage> step i/max_steps`` across epochs, with the logged progress-bar metrics beside it."""

    def __init__(self, description: str = "train", **kwargs: Any):
        super().__init__(**kwargs)
        self.description = description

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{self.description} steps"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_disabled or self.progress is None:
            return super().on_train_epoch_start(trainer, pl_module)
        if self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add_task(trainer.max_steps, self._get_train_description(0))
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)
        self.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:
            self.on_train_epoch_start(trainer, pl_module)
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
