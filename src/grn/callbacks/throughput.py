"""Per-step throughput: ``perf/samples_per_sec``, ``perf/tokens_per_sec`` (global, all ranks) and, on CUDA,
``perf/mfu`` (model FLOPs utilisation against the device's peak for the training dtype)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

__all__ = ["Throughput", "batch_size_and_tokens"]


def batch_size_and_tokens(pl_module: L.LightningModule, batch: Any) -> tuple[int, int | None]:
    """``(samples, tokens)`` of one local batch. Tokens are latent positions: ``(T·)h·w`` per token map
    (``"tokens"`` ``[B, d, (T,) h, w]``, or a packed batch's list of maps; joint batches add their parts), or pixels over the tokenizer's stride squared for image/video batches; the
    module may define ``tokens_per_sample(batch)`` instead. ``None`` where it is not known."""
    if not isinstance(batch, Mapping):
        first = batch[0] if isinstance(batch, (list, tuple)) else batch
        return int(first.shape[0]), None
    if "tokens" in batch:
        x = batch["tokens"]
        if isinstance(x, (list, tuple)):  # a packed batch (grn.datamodules.seq_packing): maps of any shapes
            return len(x), sum(int(t[0].numel()) for t in x)
        return int(x.shape[0]), int(x.shape[0] * math.prod(x.shape[2:]))
    parts = [batch[k] for k in ("image", "video") if isinstance(batch.get(k), Mapping)]
    if parts:  # a joint T2I/T2V batch: the sum of its parts
        counts = [batch_size_and_tokens(pl_module, part) for part in parts]
        tokens = [t for _, t in counts]
        return sum(n for n, _ in counts), None if None in tokens else sum(tokens)
    key = "video" if "video" in batch else "image" if "image" in batch else next(iter(batch))
    x = batch[key]
    b = int(x.shape[0])
    if hasattr(pl_module, "tokens_per_sample"):
        return b, b * int(pl_module.tokens_per_sample(batch))
    stride = getattr(getattr(pl_module, "tokenizer", None), "spatial_stride", None)
    if stride and x.dim() >= 4:
        return b, b * math.prod(x.shape[2:]) // (int(stride) ** 2)
    return b, None


class Throughput(L.Callback):
    """Logs throughput every ``log_every_n_steps`` optimiser steps, averaged over the steps since the last log
    (so data loading and validation stalls count, as they do for wall-clock training time).

    MFU is measured on CUDA only: the FLOPs of one training step are counted once (step ``flops_step``, with
    ``torch.utils.flop_counter``, local to this rank) and divided by the step time and the device's peak FLOP/s.
    """

    def __init__(self, log_every_n_steps: int | None = None, flops_step: int = 2) -> None:
        self.log_every_n_steps = log_every_n_steps
        self.flops_step = int(flops_step)
        self.flops_per_step: float | None = None
        self._flop_counter = None
        self._t0: float | None = None
        self._samples = 0
        self._tokens: int | None = 0
        self._steps = 0

    def _every(self, trainer: L.Trainer) -> int:
        return int(self.log_every_n_steps or trainer.log_every_n_steps or 1)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        if (
            self.flops_per_step is None
            and self._flop_counter is None
            and pl_module.device.type == "cuda"
            and self._steps + 1 == self.flops_step
        ):
            from torch.utils.flop_counter import FlopCounterMode

            self._flop_counter = FlopCounterMode(display=False)
            self._flop_counter.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._flop_counter is not None:
            self._flop_counter.__exit__(None, None, None)
            self.flops_per_step = float(self._flop_counter.get_total_flops())
            self._flop_counter = None
        samples, tokens = batch_size_and_tokens(pl_module, batch)
        self._samples += samples
        self._tokens = None if tokens is None or self._tokens is None else self._tokens + tokens
        self._steps += 1
        if self._steps % self._every(trainer):
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the queued work belongs to this window
        now = time.perf_counter()
        dt = max(now - (self._t0 or now), 1e-9)
        world = trainer.world_size
        metrics = {"perf/samples_per_sec": self._samples * world / dt, "perf/step_time": dt / self._every(trainer)}
        if self._tokens is not None:
            metrics["perf/tokens_per_sec"] = self._tokens * world / dt
        mfu = self._mfu(trainer, pl_module, dt / self._every(trainer))
        if mfu is not None:
            metrics["perf/mfu"] = mfu
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self._t0, self._samples, self._tokens = now, 0, 0

    def _mfu(self, trainer: L.Trainer, pl_module, step_time: float) -> float | None:
        if self.flops_per_step is None or pl_module.device.type != "cuda":
            return None
        from lightning.fabric.utilities.throughput import get_available_flops

        dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
        if hasattr(trainer.strategy, "mp_policy") and trainer.strategy.mp_policy() is not None:
            dtype = torch.bfloat16
        peak = get_available_flops(pl_module.device, dtype)
        if not peak:
            return None
        return self.flops_per_step / step_time / peak
