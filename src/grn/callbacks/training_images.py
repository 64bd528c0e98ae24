"""Pixels from a generator LightningModule during training: sample labels with its (EMA) weights, decode them with
the frozen tokenizer it was trained on (loaded once per callback, from ``hparams.tokenizer_ckpt``)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from grn.sampling.config import SamplerConfig, migrate_keys
from grn.sampling.entry import sample_labels

__all__ = ["TrainingImages", "PeriodicGeneratorCallback", "is_generator_module", "is_tokenizer_module",
           "module_sampler_config"]


def is_generator_module(pl_module) -> bool:
    """A class-to-image generator module (text-conditioned ones sample from captions, not class ids)."""
    net = getattr(pl_module, "net", None)
    return hasattr(pl_module, "sample") and hasattr(pl_module, "emas") and getattr(net, "num_classes", None) is not None


def is_tokenizer_module(pl_module) -> bool:
    return hasattr(pl_module, "ema_tokenizer")


def module_sampler_config(pl_module, overrides: dict[str, Any] | None = None) -> SamplerConfig:
    """The module's ``sampler`` hyper-parameter with a callback's ``overrides`` on top, as one config."""
    # hparams are stored data (an older checkpoint may use renamed keys); the callback's overrides are config
    return SamplerConfig.build(migrate_keys(pl_module.hparams.get("sampler")), **dict(overrides or {}))


class TrainingImages:
    """``images(pl_module, classes int64 [B], seed) -> float [B, 3, H, W]`` in [-1, 1] (and the RefineResult)."""

    def __init__(self, sampler: dict[str, Any] | None = None, ema: str | None = "ema1"):
        self.sampler = dict(sampler or {})
        self.ema = ema
        self._tokenizer = None

    def tokenizer(self, pl_module):
        if self._tokenizer is None:
            from grn.checkpoints import load_tokenizer

            path = pl_module.hparams.get("tokenizer_ckpt")
            if not path:
                raise ValueError(
                    "this generator module records no tokenizer_ckpt: sample callbacks cannot decode pixels"
                )
            self._tokenizer = load_tokenizer(path, map_location=pl_module.device)
        return self._tokenizer

    @torch.no_grad()
    def images(self, pl_module, classes: torch.Tensor, seed: int):
        config = module_sampler_config(pl_module, self.sampler)
        g = torch.Generator(device=pl_module.device).manual_seed(int(seed))
        ctx = pl_module.ema_weights(self.ema) if self.ema else torch.no_grad()
        with ctx:
            result = sample_labels(pl_module.net, classes.to(pl_module.device), g, config)
        pixels = self.tokenizer(pl_module).decode_labels(result.labels, target="index").float().clamp(-1, 1)
        return pixels, result


class PeriodicGeneratorCallback(L.Callback):
    """Calls ``self.record(trainer, pl_module)`` every ``self.every_n_steps`` optimiser steps of a generator stage
    and, with ``self.run_at_end``, once more at the end of training unless the last step was just recorded."""

    every_n_steps: int
    run_at_end: bool

    def record(self, trainer, pl_module) -> None:
        raise NotImplementedError

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (
            is_generator_module(pl_module)
            and self.every_n_steps > 0
            and step > 0
            and step % self.every_n_steps == 0
        ):
            self.record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if (
            is_generator_module(pl_module)
            and self.run_at_end
            and trainer.global_step % max(self.every_n_steps, 1)
        ):
            self.record(trainer, pl_module)
