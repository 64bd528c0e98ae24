"""Lightning orchestration of GRN class-to-image training: the objective, optimiser, EMAs and logging.

Batches: ``{"tokens": int64 [B, d, h, w] index labels, "label": int64 [B]}``. Index labels are converted to the
network's target layout (round-major bits for GRN_bit) here, so one token cache serves both variants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from grn.lit_modules.config import plain_hparams
from grn.lit_modules.optim import adamw
from grn.lit_modules.refiner import RefinementLitModule
from grn.models.generator import GRN
from grn.objective import mix_with_noise, sample_keep_prob
from grn.sampling.config import SamplerConfig
from grn.sampling.entry import sample_labels
from grn.sampling.refine import RefineResult


class GeneratorLitModule(RefinementLitModule):
    """Trains a :class:`~grn.models.generator.GRN` on HBQ token maps.

    Args:
        net: Hydra config of the network (``_target_`` + kwargs).
        tokenizer_ckpt: the frozen tokenizer the tokens came from (recorded for decoding at sample time).
        label_drop_prob: share of class labels replaced by the null class (for guidance).
        keep_prob_mean, keep_prob_std: logit-normal keep-probability of the training objective.
        blr: base learning rate; lr = blr · global_batch / 256 unless ``lr`` is given.
        optimizer: ``_partial_`` optimiser config (AdamW (0.9, 0.95), no weight decay); 1-D parameters and biases
            get no weight decay.
        lr_scheduler: ``_partial_`` schedule config (default: none, constant LR; the configs warm up linearly).
        grad_clip: max gradient norm (0 disables).
        ema_decays: one EMA per decay (``ema1``, ``ema2``, ...); ``ema1`` is used for evaluation and sampling.
        ema_warmup: ramp the EMA decay up over the first updates (for short runs).
        sampler: sampler settings used for validation samples.
    """

    def __init__(
        self,
        net: dict,
        tokenizer_ckpt: str | None = None,
        label_drop_prob: float = 0.1,
        keep_prob_mean: float = -0.8,
        keep_prob_std: float = 0.8,
        blr: float = 5e-5,
        lr: float | None = None,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
        grad_clip: float = 1.0,
        ema_decays: Sequence[float] = (0.9999, 0.9996),
        ema_warmup: bool = False,
        sampler: dict | None = None,
    ):
        super().__init__()
        # plain containers in the checkpoint's hyper_parameters (save_hyperparameters reads these locals)
        optimizer = optimizer if optimizer is not None else adamw(betas=(0.9, 0.95), weight_decay=0.0)
        net, sampler, optimizer, lr_scheduler, ema_decays, tokenizer_ckpt = plain_hparams(
            net, sampler, optimizer, lr_scheduler, ema_decays, tokenizer_ckpt)
        self.save_hyperparameters()
        self.net: GRN = instantiate(self.hparams.net)
        self.build_emas(ema_decays, ema_warmup)

    # ---- training --------------------------------------------------------------------------------------------
    def objective(self, batch: dict, generator: torch.Generator | None = None, drop_labels: bool = True):
        """The GRN loss (paper Eq. 7): cross-entropy on every token of the noised map. Returns (loss, t, acc)."""
        x = self.target_labels(batch["tokens"])
        y = batch["label"]
        b = x.shape[0]
        t = sample_keep_prob(b, self.hparams.keep_prob_mean, self.hparams.keep_prob_std, x.device, generator)
        if drop_labels and self.hparams.label_drop_prob > 0:
            drop = torch.rand(b, device=x.device, generator=generator) < self.hparams.label_drop_prob
            y = torch.where(drop, torch.full_like(y, self.net.num_classes), y)
        z = mix_with_noise(x, t, self.num_levels, generator)
        if getattr(self.net, "bit_target", "absolute") == "relative":
            x = x ^ z  # App. E.3: the target is which input bits must flip
        logits = self.net(z, t, y)
        loss = F.cross_entropy(logits.float(), x)
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == x).float().flatten(1).mean(1)  # [B]
        return loss, t, acc

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _, acc = self.objective(batch)
        n = acc.numel()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self.log("train/token_acc", acc.mean(), on_step=True, on_epoch=False, batch_size=n)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # A fixed generator per batch makes the validation loss comparable across evaluations.
        g = torch.Generator(device=batch["tokens"].device).manual_seed(1000 + batch_idx)
        with self.ema_weights():
            loss, _, acc = self.objective(batch, generator=g, drop_labels=False)
        # batch_size: the epoch mean weighs a short last batch by its size (and Lightning need not guess it)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=acc.numel())
        self.log("val/token_acc", acc.mean(), on_epoch=True, sync_dist=True, batch_size=acc.numel())

    # ---- optimisation ----------------------------------------------------------------------------------------
    def learning_rate(self) -> float:
        if self.hparams.lr is not None:
            return float(self.hparams.lr)
        global_batch = self.trainer.datamodule.batch_size * self.trainer.world_size
        global_batch *= self.trainer.accumulate_grad_batches
        return self.hparams.blr * global_batch / 256

    @torch.no_grad()
    def sample(self, classes: torch.Tensor, generator: torch.Generator | None = None,
               sampler: SamplerConfig | None = None, **overrides: Any) -> RefineResult:
        """Refine label maps for ``classes`` with the current weights; returns index labels ``[B, d, h, w]``
        (:func:`grn.sampling.entry.sample_labels`)."""
        return sample_labels(self.net, classes, generator, sampler, **overrides)
