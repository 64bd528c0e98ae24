"""Sample grids during generator training: ``per_class`` images of each of the first ``num_classes`` classes (one
row per class) from the EMA weights with a fixed seed, so successive grids show the same noise maturing. Saved as
``<stage dir>/samples/step<N>.png`` and logged as an image (W&B / TensorBoard)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchvision.utils import save_image

from grn.callbacks.media import callback_dir, log_image
from grn.callbacks.training_images import TrainingImages, PeriodicGeneratorCallback

__all__ = ["SampleGrid"]


class SampleGrid(PeriodicGeneratorCallback):
    def __init__(
        self,
        every_n_steps: int = 2000,
        num_classes: int = 10,
        per_class: int = 8,
        sampler: dict[str, Any] | None = None,
        ema: str | None = "ema1",
        seed: int = 0,
        out_dir: str | None = None,
        on_train_end: bool = True,
    ):
        self.every_n_steps = int(every_n_steps)
        self.num_classes = int(num_classes)
        self.per_class = int(per_class)
        self.gen = TrainingImages(sampler, ema)
        self.seed = int(seed)
        self.out_dir = out_dir
        self.run_at_end = on_train_end
        self.last_png = None

    @torch.no_grad()
    def record(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return  # a small grid: one rank draws it (nothing waits on it)
        n = min(self.num_classes, pl_module.net.num_classes)
        classes = torch.arange(n).repeat_interleave(self.per_class)
        images, _ = self.gen.images(pl_module, classes, self.seed)
        png = callback_dir(trainer, self.out_dir, "samples") / f"step{trainer.global_step:07d}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        save_image(((images + 1) / 2).clamp(0, 1), png, nrow=self.per_class, padding=2, pad_value=0.5)
        self.last_png = png
        log_image(trainer, "samples/grid", png, trainer.global_step)
