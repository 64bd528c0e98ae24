"""The entropy-step histogram: what complexity-aware sampling (paper Eq. 8-9) does during training.

Every ``every_n_steps`` optimiser steps, ``num_samples`` class-balanced samples are refined with the generator's EMA
weights under the configured sampler (by default ``schedule: complexity_aware``). Two distributions are recorded:

* the per-sample step counts (how many refinement steps each image took) — a histogram;
* the mean normalised prediction entropy at each step — one bar per step.

Both go to W&B as histograms (``entropy_steps/steps``, ``entropy_steps/entropy_per_step``), to TensorBoard where
present, as scalars (mean steps, final entropy) to every logger, and as a PNG in ``<stage dir>/entropy_steps/``.
Each rank samples its own share (seeded by rank) and the results are gathered, so the cost is spread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from grn.callbacks.media import callback_dir, log_histogram, log_image, log_scalars
from grn.callbacks.training_images import module_sampler_config
from grn.sampling.entry import sample_labels

__all__ = ["EntropyStepHistogram", "plot_entropy_steps"]


def plot_entropy_steps(steps: np.ndarray, entropy: np.ndarray, path: Path, title: str = "") -> Path:
    """Two panels: the histogram of per-sample step counts and the mean entropy per step → PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on compute nodes
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    lo, hi = int(steps.min()), int(steps.max())
    a.hist(steps, bins=np.arange(lo - 0.5, hi + 1.5, 1.0), color="tab:blue")
    a.set(xlabel="refinement steps per sample", ylabel="samples", title=f"mean {steps.mean():.1f} steps")
    b.bar(np.arange(1, len(entropy) + 1), entropy, color="tab:orange")
    b.set(
        xlabel="step",
        ylabel="mean normalised entropy (Eq. 8)",
        ylim=(0, max(1e-3, float(entropy.max()) * 1.1)),
    )
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)  # atomic: a reader never sees half a PNG
    return path


class EntropyStepHistogram(L.Callback):
    """See the module docstring.

    Args:
        every_n_steps: period in optimiser steps (also runs once at the end of training when ``on_train_end``).
        num_samples: samples per evaluation, over all ranks.
        sampler: overrides on top of the module's sampler settings (default: complexity-aware).
        ema: the EMA whose weights sample (``None``: the live weights).
        out_dir: where PNGs go (default ``<stage dir>/entropy_steps``).
        seed: the sampler seed (plus the rank).
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_samples: int = 64,
        sampler: dict[str, Any] | None = None,
        ema: str | None = "ema1",
        out_dir: str | None = None,
        seed: int = 0,
        on_train_end: bool = True,
    ):
        self.every_n_steps = int(every_n_steps)
        self.num_samples = int(num_samples)
        self.sampler = {"schedule": "complexity_aware", **dict(sampler or {})}
        self.ema = ema
        self.out_dir = out_dir
        self.seed = int(seed)
        self.run_at_end = on_train_end
        self.last_png: Path | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.run_at_end and trainer.global_step % max(self.every_n_steps, 1) != 0:
            self.record(trainer, pl_module)

    @torch.no_grad()
    def collect(self, trainer: L.Trainer, pl_module) -> tuple[np.ndarray, np.ndarray]:
        """Sample this rank's share and gather → ``(steps int [N], mean entropy per step float [L])``."""
        rank, world = trainer.global_rank, trainer.world_size
        share = torch.arange(rank, self.num_samples, world, device=pl_module.device)
        classes = share % pl_module.net.num_classes
        config = module_sampler_config(pl_module, self.sampler)
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed + rank)
        ctx = pl_module.ema_weights(self.ema) if self.ema else torch.no_grad()
        with ctx:
            result = sample_labels(pl_module.net, classes, g, config)
        ent = torch.full((config.max_steps,), float("nan"), device=pl_module.device)
        ent[: len(result.stats["entropy"])] = result.stats["entropy"].float()
        steps = torch.full((self.num_samples // world + 1,), -1, dtype=torch.long, device=pl_module.device)
        steps[: len(result.steps)] = result.steps  # padded so every rank gathers one shape
        if world > 1:
            steps, ent = pl_module.all_gather(steps).flatten(), pl_module.all_gather(ent).nanmean(0)
        steps = steps[steps >= 0].cpu().numpy()
        ent = ent.cpu().numpy()
        return steps, ent[~np.isnan(ent)]

    def record(self, trainer: L.Trainer, pl_module) -> None:
        steps, entropy = self.collect(trainer, pl_module)
        step = trainer.global_step
        if trainer.is_global_zero:
            png = callback_dir(trainer, self.out_dir, "entropy_steps") / f"step{step:07d}.png"
            self.last_png = plot_entropy_steps(steps, entropy, png, title=f"step {step}")
            log_image(trainer, "entropy_steps/plot", png, step)
        edges = np.arange(len(entropy) + 1, dtype=np.float64) + 0.5
        step_bins = np.arange(int(steps.min()) - 0.5, int(steps.max()) + 1.5)  # one bin per step count
        log_histogram(
            trainer, "entropy_steps/steps", step, values=steps, bars=np.histogram(steps, bins=step_bins)
        )
        log_histogram(trainer, "entropy_steps/entropy_per_step", step, bars=(entropy, edges))
        log_scalars(
            trainer,
            {
                "entropy_steps/mean_steps": float(steps.mean()),
                "entropy_steps/final_entropy": float(entropy[-1]),
            },
            step,
        )
