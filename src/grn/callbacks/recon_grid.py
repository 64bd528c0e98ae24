"""Tokenizer reconstruction grids: after each validation, the first ``num_images`` held-out images (top row) and
their EMA reconstructions (bottom row) as ``<stage dir>/reconstructions/step<N>.png`` (an MP4 for video batches),
logged as an image (W&B / TensorBoard). Only for tokenizer modules; a no-op elsewhere."""

from __future__ import annotations

import lightning as L
import torch

from grn.callbacks.media import callback_dir, log_image
from grn.callbacks.training_images import is_tokenizer_module

__all__ = ["ReconstructionGrid"]


class ReconstructionGrid(L.Callback):
    def __init__(self, num_images: int = 8, out_dir: str | None = None):
        self.num_images = int(num_images)
        self.out_dir = out_dir
        self.last_file = None
        self._batch: torch.Tensor | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx == 0 and is_tokenizer_module(pl_module) and isinstance(batch, dict):
            key = "image" if "image" in batch else "video" if "video" in batch else None
            if key is not None:
                self._batch = batch[key][: self.num_images].detach()

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._batch is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        from grn.metrics.recon import reconstruct, side_by_side

        x = self._batch
        recon = reconstruct(pl_module.ema_tokenizer(), x, x.device)
        stem = callback_dir(trainer, self.out_dir, "reconstructions") / f"step{trainer.global_step:07d}"
        self.last_file = side_by_side(x.cpu().float(), recon.cpu(), stem)
        if self.last_file.suffix == ".png":
            log_image(trainer, "reconstructions/grid", self.last_file, trainer.global_step)
        self._batch = None
