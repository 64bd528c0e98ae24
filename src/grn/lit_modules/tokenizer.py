"""Stage 1: train the HBQ tokenizer (reconstruction L1 + LPIPS + PatchGAN), with an EMA of its weights.

The module only orchestrates: the tokenizer and discriminator are built from ``_target_`` configs, the losses
come from ``grn.losses``. GAN training uses manual optimisation with two optimisers; one step is counted per
batch, so ``trainer.global_step`` (and ``max_steps``) is the number of batches: with ``joint_update="joint"``
(the default) that is the number of tokenizer updates, with ``"per_batch"`` (the released rule) a joint batch
makes one tokenizer and one discriminator update per part.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch.nn.parallel import DistributedDataParallel
from torchmetrics.functional.image import peak_signal_noise_ratio

from grn.distributed.fsdp import is_sharded, reshard, shard_module
from grn.lit_modules.config import CheckedLoad, plain_config
from grn.lit_modules.optim import adamw, build_optimizer, decay_groups
from grn.models.discriminator import to_sync_batch_norm, uses_batch_statistics
from grn.models.ema import EMA
from grn.losses.adversarial import adaptive_weight, generator_adv_loss, hinge_d_loss
from grn.losses.perceptual import build_lpips
from grn.models.tokenizer import HBQTokenizer

__all__ = ["TokenizerLitModule", "JOINT_UPDATES"]

log = logging.getLogger(__name__)

JOINT_UPDATES = ("joint", "per_batch")


def _frames(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` → ``[B·T, C, H, W]`` (images pass through) for the 2-D discriminator."""
    if x.dim() == 5:
        return x.transpose(1, 2).flatten(0, 1)
    return x


def _no_closure() -> None:
    return None


class TokenizerLitModule(CheckedLoad, L.LightningModule):
    """Trains :class:`~grn.models.tokenizer.HBQTokenizer` as a VQGAN-style autoencoder through HBQ's STE.

    Batch contract (joint image + video training): a dict with ``"image"`` float ``[B_i, 3, H, W]`` and/or
    ``"video"`` float ``[B_v, 3, T, H', W']`` (T = 1 + s_t·k), both in [-1, 1]; other keys (``"label"``) are
    ignored. An image is a 1-frame video for the causal tokenizer, but the two parts keep their own shapes, so
    each goes through the tokenizer and the losses on its own. Every loss term (L1 over pixels, LPIPS and the
    PatchGAN per frame) is the mean over its part, and a batch's term is the mean over the parts present:
    a joint batch has the same loss scale as a single-part one, so the weights mean the same in both. The logs
    carry the combined terms (``train/l1``, ``train/lpips``, ``train/gan_g``, ``train/gan_d``) and, for joint
    batches, each part's (``train/l1_image``, ``train/l1_video``, …). ``train/loss`` is always
    ``l1_weight·l1 + lpips_weight·lpips + gan_weight_eff·gan_g`` with ``train/gan_weight`` = gan_weight_eff.

    Args:
        tokenizer: ``_target_`` config of the tokenizer (e.g. ``grn.models.tokenizer.HBQTokenizer``).
        discriminator: ``_target_`` config of the discriminator
            (e.g. ``grn.models.discriminator.PatchDiscriminator``).
        lpips: kwargs of :func:`grn.losses.perceptual.build_lpips` (None: its defaults, i.e. the real VGG
            weights); no LPIPS net is built when ``lpips_weight == 0``.
        l1_weight, lpips_weight, gan_weight: loss weights; ``gan_weight`` multiplies the adaptive weight.
        disc_start: generator step from which the GAN terms (both steps) are on.
        adaptive_gan_weight: use the VQGAN gradient-norm ratio (else 1) before ``gan_weight``.
        lr, disc_lr: learning rates of the tokenizer and discriminator optimisers (``disc_lr`` None: ``lr``);
            constant (no scheduler).
        optimizer: ``_partial_`` optimiser config of the tokenizer (:mod:`grn.lit_modules.optim`; default AdamW
            betas (0.5, 0.9), weight decay 0), built in ``configure_optimizers`` after sharding. Its
            ``weight_decay`` applies to the decayed parameter group (see ``decay_1d_and_bias``).
        disc_optimizer: the discriminator's ``_partial_`` optimiser config (None: ``optimizer``); its
            ``weight_decay`` applies to every discriminator parameter.
        grad_clip: max gradient norm for each optimiser (0 disables).
        ema_decays, ema_warmup: EMA of the tokenizer weights (see :class:`~grn.models.ema.EMA`), updated after
            every tokenizer update. One decay (a one-element list: the same key as the generators', which keep
            several EMAs).
        quantize: decode the HBQ-quantised latent (straight-through) rather than the continuous one.
        disc_weight: factor on the discriminator's hinge loss (official ``image_disc_weight``).
        decay_1d_and_bias: apply the optimiser's weight decay to all tokenizer parameters (True) or, as the
            released recipe does, only to those with ``ndim >= 2`` that are not biases (False).
        joint_update: ``"joint"``: one tokenizer and one discriminator update per batch, each loss the mean
            over the batch's parts; ``"per_batch"``: the released rule (facts D7), one tokenizer and one
            discriminator update per part (image, then video), each on that part alone.
    """

    # each backward reaches only one of the two networks: DDP must look for unused parameters (train.py sets it)
    ddp_find_unused_parameters = True
    stored_configs = {"tokenizer": {"tokenizer"}, "discriminator": {"discriminator"}}

    def __init__(
        self,
        tokenizer: dict,
        discriminator: dict,
        lpips: dict | None = None,
        l1_weight: float = 1.0,
        lpips_weight: float = 1.0,
        gan_weight: float = 0.3,
        disc_start: int = 0,
        adaptive_gan_weight: bool = True,
        lr: float = 1e-4,
        disc_lr: float | None = None,
        optimizer: dict | None = None,
        disc_optimizer: dict | None = None,
        grad_clip: float = 1.0,
        ema_decays: Sequence[float] = (0.999,),
        ema_warmup: bool = True,
        quantize: bool = True,
        disc_weight: float = 1.0,
        decay_1d_and_bias: bool = True,
        joint_update: str = "joint",
    ):
        super().__init__()
        if joint_update not in JOINT_UPDATES:
            raise ValueError(f"joint_update must be one of {JOINT_UPDATES}, got {joint_update!r}")
        # plain containers in the checkpoint's hyper_parameters (save_hyperparameters reads these locals)
        tokenizer, discriminator, lpips = plain_config(tokenizer), plain_config(discriminator), plain_config(lpips)
        optimizer = plain_config(optimizer) or adamw(betas=[0.5, 0.9], weight_decay=0.0)
        disc_optimizer = plain_config(disc_optimizer)
        ema_decays = [float(d) for d in ema_decays]
        if len(ema_decays) != 1:
            raise ValueError(f"the tokenizer keeps one EMA: ema_decays must have one decay, got {ema_decays}")
        self.save_hyperparameters()
        self.automatic_optimization = False

        self.tokenizer: HBQTokenizer = instantiate(tokenizer, _convert_="all")
        self.discriminator = instantiate(discriminator, _convert_="all")
        self.lpips = build_lpips(**(lpips or {})) if lpips_weight > 0 else None
        self.ema = EMA(self.tokenizer, ema_decays[0], warmup=ema_warmup)
        # the EMA copy used during validation; kept in a dict so it is not registered as a submodule
        self._val_cache: dict[str, HBQTokenizer] = {}

    # ----------------------------------------------------------------------------------------------- helpers
    @staticmethod
    def _parts(batch: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """The pixel parts of a batch, ``[("image", x), ("video", v)]`` (those present, in this order)."""
        parts = [(key, batch[key]) for key in ("image", "video") if key in batch]
        if not parts:
            raise KeyError(f"tokenizer batches need 'image' and/or 'video' pixels, got keys {sorted(batch)}")
        return parts

    @staticmethod
    def _mean_over_parts(
        terms: dict[str, torch.Tensor], logs: dict[str, torch.Tensor], name: str
    ) -> torch.Tensor:
        """Mean of the per-part terms; logs it as ``train/<name>`` and, for joint batches, each part too."""
        total = torch.stack(list(terms.values())).mean()
        logs[f"train/{name}"] = total.detach()
        if len(terms) > 1:
            logs.update({f"train/{name}_{key}": term.detach() for key, term in terms.items()})
        return total

    def _gan_active(self) -> bool:
        return self.hparams.gan_weight > 0 and self.global_step >= self.hparams.disc_start

    def ema_tokenizer(self) -> HBQTokenizer:
        """A fresh copy of the tokenizer holding the EMA weights, in eval mode."""
        tok = copy.deepcopy(self.tokenizer)
        self.ema.copy_to(tok)
        return tok.eval()

    # ---------------------------------------------------------------------------------------------- training
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        parts = self._parts(batch)
        n_samples = sum(x.shape[0] for _, x in parts)
        if self.hparams.joint_update == "joint":
            updates = [parts]
        else:  # the released rule: each part gets its own tokenizer and discriminator update
            updates = [[part] for part in parts]
        use_gan = self._gan_active()  # decided once per batch, before its first (counted) update
        terms: dict[str, dict[str, torch.Tensor]] = {}
        losses, gan_weights = [], []
        for i, update_parts in enumerate(updates):
            loss, gan_weight = self._update(update_parts, terms, use_gan, counted=i == 0)
            losses.append(loss)
            gan_weights.append(gan_weight)
        logs: dict[str, torch.Tensor] = {}
        for name, per_part in terms.items():
            self._mean_over_parts(per_part, logs, name)
        logs["train/gan_weight"] = torch.stack(gan_weights).mean()
        loss = torch.stack(losses).mean()
        self.log_dict(logs, batch_size=n_samples)
        self.log("train/loss", loss, prog_bar=True, batch_size=n_samples)
        return loss

    def _update(
        self,
        parts: list[tuple[str, torch.Tensor]],
        terms: dict[str, dict[str, torch.Tensor]],
        use_gan: bool,
        counted: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One tokenizer update and (once the GAN is on) one discriminator update on ``parts``.

        Each loss is the mean of its per-part terms, which are recorded (detached) in
        ``terms[name][part]``. ``counted``: step the tokenizer's optimiser through Lightning, which counts it
        in ``global_step`` (one per batch); otherwise through the strategy, like the discriminator's.
        Returns the detached tokenizer loss and the GAN weight used.
        """
        hp = self.hparams
        opt_g, opt_d = self.optimizers()
        device = parts[0][1].device

        def mean(name: str, per_part: dict[str, torch.Tensor]) -> torch.Tensor:
            terms.setdefault(name, {}).update({k: v.detach() for k, v in per_part.items()})
            return torch.stack(list(per_part.values())).mean()

        # generator (tokenizer) step; the discriminator is frozen meanwhile so it collects no gradients
        self.toggle_optimizer(opt_g)
        recs = {key: self.tokenizer(x, quantize=hp.quantize)[0] for key, x in parts}
        nll = hp.l1_weight * mean("l1", {k: (recs[k] - x).abs().mean() for k, x in parts})
        if self.lpips is not None:  # per frame: the LPIPS wrapper folds a video's time into its batch
            nll = nll + hp.lpips_weight * mean("lpips", {k: self.lpips(recs[k], x).mean() for k, x in parts})
        loss, gan_weight = nll, torch.zeros((), device=device)
        if use_gan:
            g_adv = mean("gan_g", {k: generator_adv_loss(self.discriminator(_frames(recs[k]))) for k, _ in parts})
            if hp.adaptive_gan_weight:
                gan_weight = hp.gan_weight * adaptive_weight(nll, g_adv, self.tokenizer.last_layer)
            else:
                gan_weight = torch.full((), float(hp.gan_weight), device=device)
            loss = nll + gan_weight * g_adv
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if counted:
            opt_g.step()  # counted: global_step += 1
        else:
            self.trainer.strategy.optimizer_step(opt_g.optimizer, closure=_no_closure)
        self.untoggle_optimizer(opt_g)
        self.ema.update(self.tokenizer)

        if use_gan:
            self.toggle_optimizer(opt_d)
            d_terms = {
                k: hinge_d_loss(self.discriminator(_frames(x)), self.discriminator(_frames(recs[k].detach())))
                for k, x in parts
            }
            d_loss = hp.disc_weight * mean("gan_d", d_terms)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            # Through the strategy (precision plugin: AMP scaling, clipping hook) but not through
            # LightningOptimizer.step, which would count a second optimizer step per batch.
            self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=_no_closure)
            self.untoggle_optimizer(opt_d)
        return loss.detach(), gan_weight.detach()

    def on_fit_start(self) -> None:
        # Each backward uses only one of the two models, so DDP must be told to skip the other's gradients.
        model = self.trainer.strategy.model
        if isinstance(model, DistributedDataParallel) and not model.find_unused_parameters:
            raise ValueError(
                "tokenizer GAN training under DDP needs find_unused_parameters=True: use trainer.strategy="
                "ddp_find_unused_parameters_true (or DDPStrategy(find_unused_parameters=True))"
            )

    def configure_model(self) -> None:
        self._sync_batch_norm()
        # FSDP2 (trainer=fsdp) shards the two trained networks and the EMA; the frozen LPIPS net stays whole
        shard_module(self, [self.tokenizer, self.discriminator], [(self.ema, self.tokenizer)])

    def _sync_batch_norm(self) -> None:
        """Under multi-GPU DDP, batch statistics of the discriminator are computed over all ranks
        (SyncBatchNorm, as in the released run); on CPU ranks (gloo) each rank keeps its own, with a log line."""
        if not uses_batch_statistics(self.discriminator) or self._trainer is None:
            return
        strategy = self.trainer.strategy
        if getattr(strategy, "world_size", 1) <= 1:
            return
        if strategy.root_device.type == "cpu":
            log.warning("discriminator norm=batch on CPU ranks: batch statistics are per rank (no SyncBatchNorm)")
            return
        self.discriminator = to_sync_batch_norm(self.discriminator)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs for both optimisers after AMP unscaling, so the norm is that of the true gradients.
        if self.hparams.grad_clip and self.hparams.grad_clip > 0:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm"
            )

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = build_optimizer(hp.optimizer, decay_groups(self.tokenizer, not hp.decay_1d_and_bias), hp.lr)
        opt_d = build_optimizer(hp.disc_optimizer or hp.optimizer, [{"params": list(self.discriminator.parameters())}],
                                hp.disc_lr if hp.disc_lr is not None else hp.lr)
        return [opt_g, opt_d]

    # -------------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        if is_sharded(self.tokenizer):
            # FSDP modules cannot be deep-copied: swap the EMA weights into the shards, and back at the end
            self._live_shards = [p.detach().clone() for p in reshard(self.tokenizer).parameters()]
            self.ema.copy_to(self.tokenizer)
            self._val_cache["tokenizer"] = self.tokenizer
            return
        self._val_cache["tokenizer"] = self.ema_tokenizer()  # one copy per validation run, not per batch

    def on_validation_epoch_end(self) -> None:
        live = self.__dict__.pop("_live_shards", None)
        if live is not None:
            with torch.no_grad():
                for p, value in zip(reshard(self.tokenizer).parameters(), live, strict=True):
                    p.copy_(value)
        self._val_cache.clear()

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Logs ``val/psnr`` and ``val/l1`` over all frames of the batch and, per part present,
        ``val/psnr_image`` / ``val/psnr_video`` (and ``val/l1_*``): per-frame PSNR on the [0, 1] scale."""
        tok = self._val_cache.get("tokenizer")
        if tok is None:
            tok = self._val_cache["tokenizer"] = self.ema_tokenizer()
        psnrs, l1s = [], []
        for key, x in self._parts(batch):
            x_rec = tok(x, quantize=self.hparams.quantize)[0].clamp(-1.0, 1.0)
            pred, target = _frames((x_rec + 1) / 2), _frames((x + 1) / 2)  # [N_frames, 3, H, W]
            psnr = peak_signal_noise_ratio(pred, target, data_range=1.0, dim=(1, 2, 3), reduction="none")
            l1 = (pred - target).abs().mean(dim=(1, 2, 3)) * 2  # on the [-1, 1] scale, as the training L1
            psnrs.append(psnr)
            l1s.append(l1)
            self.log_dict(
                {f"val/psnr_{key}": psnr.mean(), f"val/l1_{key}": l1.mean()},
                batch_size=psnr.numel(),
                sync_dist=True,
            )
        psnr, l1 = torch.cat(psnrs), torch.cat(l1s)
        logs = {"val/psnr": psnr.mean(), "val/l1": l1.mean()}
        self.log_dict(logs, batch_size=psnr.numel(), sync_dist=True, prog_bar=True)

    # ------------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen LPIPS net is rebuilt from its config: leaving its ~15M VGG weights out keeps files small.
        # (A sharded checkpoint is loaded against the full module state, so there they stay.)
        if is_sharded(self.tokenizer) and getattr(self.trainer.strategy, "_save_distributed_checkpoint", False):
            return
        for key in [k for k in checkpoint["state_dict"] if k.startswith("lpips.")]:
            del checkpoint["state_dict"][key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.lpips is not None:  # put the frozen weights back so a strict load succeeds
            for key, value in self.lpips.state_dict().items():
                checkpoint["state_dict"].setdefault(f"lpips.{key}", value)

    @staticmethod
    def load_tokenizer(
        ckpt_path: str | os.PathLike, map_location: str | torch.device = "cpu", use_ema: bool = True
    ) -> HBQTokenizer:
        """:func:`grn.checkpoints.load_tokenizer` (kept here for callers that hold the module class)."""
        from grn import checkpoints  # looked up per call: a test that replaces the loader replaces it here too

        return checkpoints.load_tokenizer(ckpt_path, map_location=map_location, use_ema=use_ema)
