"""FID / IS every N steps on a small sample count, logged as a *proxy* (``proxy/fid@<n>``, ``proxy/is@<n>``).

A few images per class are generated with the EMA weights and scored with the same machinery as ``eval.py``
(torch-fidelity extractor, reference ``.npz``, float64 statistics all-reduced over ranks, each rank generating its
share). With a few hundred images FID is strongly biased upwards, so the numbers only track progress within one
run; the key names carry the sample count so they are never confused with a 50K FID. With the ``grn-digits``
stand-in the keys are ``proxy/digits_fid@<n>`` / ``proxy/digits_is@<n>``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from grn.callbacks.media import log_scalars
from grn.callbacks.training_images import TrainingImages, PeriodicGeneratorCallback
from grn.metrics.fid import FidIsAccumulator, build_feature_extractor, to_uint8
from grn.metrics.protocol import balanced_batches, metric_name

__all__ = ["FidIsProxy"]


class FidIsProxy(PeriodicGeneratorCallback):
    """See the module docstring.

    Args:
        every_n_steps: period in optimiser steps; also once at the end of training when ``on_train_end``.
        num_per_class: images per class (all ranks together).
        feature_extractor, feature_extractor_weights_path: as ``eval.fid`` (nothing is downloaded).
        reference_stats: the reference ``.npz``; ``None`` logs IS only.
        build_reference, data: build a missing reference from ``data``'s train split (the digits stand-in).
        sampler, ema, seed: generation settings on top of the module's sampler.
    """

    def __init__(
        self,
        every_n_steps: int = 5000,
        num_per_class: int = 5,
        feature_extractor: str = "grn-digits",
        feature_extractor_weights_path: str | None = None,
        reference_stats: str | None = None,
        build_reference: bool = False,
        data: Any = None,
        isc_splits: int = 2,
        batch_size: int = 100,
        sampler: dict[str, Any] | None = None,
        ema: str | None = "ema1",
        seed: int = 0,
        on_train_end: bool = True,
    ):
        self.every_n_steps = int(every_n_steps)
        self.num_per_class = int(num_per_class)
        self.fid_cfg = OmegaConf.create(
            {
                "feature_extractor": feature_extractor,
                "feature_extractor_weights_path": feature_extractor_weights_path,
                "reference_stats": reference_stats,
                "build_reference": build_reference,
            }
        )
        self.data = data
        self.isc_splits = int(isc_splits)
        self.batch_size = int(batch_size)
        self.gen = TrainingImages(sampler, ema)
        self.seed = int(seed)
        self.run_at_end = on_train_end
        self._extractor = None
        self._reference = None
        self.last: dict[str, float] = {}

    def accumulator(self, device) -> FidIsAccumulator:
        if self._extractor is None:
            self._extractor = build_feature_extractor(
                self.fid_cfg.feature_extractor, self.fid_cfg.feature_extractor_weights_path, device
            )
        acc = FidIsAccumulator(self._extractor, isc_splits=self.isc_splits, batch_size=self.batch_size)
        if self._reference is None and self.fid_cfg.reference_stats:
            from grn.metrics.reference import ensure_reference_stats

            self._reference = ensure_reference_stats(self.fid_cfg, acc, self.data)
        return acc

    @torch.no_grad()
    def record(self, trainer: L.Trainer, pl_module) -> dict[str, float]:
        acc = self.accumulator(pl_module.device)
        num_classes = pl_module.net.num_classes
        for b, index in balanced_batches(
            num_classes, self.num_per_class, self.batch_size, trainer.global_rank, trainer.world_size
        ):
            images, _ = self.gen.images(pl_module, index // self.num_per_class, self.seed + b)
            acc.update(to_uint8(images), index)
        scores = acc.compute(self._reference)
        n = scores["num_images"]
        extractor = self.fid_cfg.feature_extractor
        self.last = {f"proxy/{metric_name('is', extractor)}@{n}": scores["inception_score_mean"]}
        if "fid" in scores:
            self.last[f"proxy/{metric_name('fid', extractor)}@{n}"] = scores["fid"]
        log_scalars(trainer, self.last, trainer.global_step)
        return self.last
