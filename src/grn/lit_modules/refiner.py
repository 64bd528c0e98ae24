"""What the class- and text-conditioned GRN Lightning modules share: the label layout, AdamW with warm-up, gradient
clipping, EMAs updated right after each optimiser step, FSDP2 sharding and the EMA weight swap.

A subclass sets ``self.net`` (a network with ``target`` / ``hbq_rounds``) and calls :meth:`build_emas` in
``__init__``, keeps ``optimizer`` / ``lr_scheduler`` (``_partial_`` configs, :mod:`grn.lit_modules.optim`) and
``grad_clip`` in its hyper-parameters and implements :meth:`learning_rate`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import lightning as L
import torch

from grn import hbq
from grn.distributed.fsdp import reshard, shard_module
from grn.lit_modules.config import CheckedLoad
from grn.lit_modules.optim import build_optimizer, build_scheduler, decay_groups
from grn.models.ema import EMA


class RefinementLitModule(CheckedLoad, L.LightningModule):
    """Base of :class:`~grn.lit_modules.generator.GeneratorLitModule` and :class:`~grn.lit_modules.t2iv.T2IVLitModule`."""

    stored_configs = {"net": {"generator", "t2iv"}, "text_encoder": {"text_encoder"}}

    net: torch.nn.Module
    emas: torch.nn.ModuleDict

    def learning_rate(self) -> float:
        raise NotImplementedError

    def build_emas(self, decays, warmup: bool) -> None:
        """One EMA of ``self.net`` per decay, named ``ema1``, ``ema2``, ... (``ema1`` is used for sampling)."""
        self.num_levels = self.net.num_levels
        self.emas = torch.nn.ModuleDict({f"ema{i + 1}": EMA(self.net, d, warmup=warmup) for i, d in enumerate(decays)})

    def target_labels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index labels ``[B, d, (T,) h, w]`` -> the network's layout (round-major bits for GRN_bit)."""
        if self.net.target == "bits":
            return hbq.index_labels_to_bit_labels(tokens, self.net.hbq_rounds)
        return tokens

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.hparams.grad_clip and self.hparams.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.hparams.grad_clip)
            if hasattr(norm, "full_tensor"):  # FSDP2: the norm over all shards, as a DTensor
                norm = norm.full_tensor()
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def configure_model(self) -> None:
        # FSDP2 (trainer=fsdp) shards the network and lays the EMAs out like it; a no-op under DDP / one device
        shard_module(self, [self.net], [(ema, self.net) for ema in self.emas.values()])

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # here, not in on_train_batch_end: callbacks (the periodic checkpoint) run before that module hook, so
        # a checkpoint would miss this step's EMA update and a resumed run would drift from an uninterrupted one
        for ema in self.emas.values():
            ema.update(self.net)

    def configure_optimizers(self):
        """The ``_partial_`` optimiser over the (sharded) network, 1-D parameters and biases without weight decay,
        at :meth:`learning_rate`; the ``_partial_`` LR schedule stepped every optimiser step."""
        opt = build_optimizer(self.hparams.optimizer, decay_groups(self.net), self.learning_rate())
        sched = build_scheduler(self.hparams.get("lr_scheduler"), opt)
        return {"optimizer": opt, "lr_scheduler": sched} if sched else opt

    @contextlib.contextmanager
    def ema_weights(self, name: str = "ema1") -> Iterator[None]:
        """Temporarily swap the EMA weights into ``self.net``."""
        live = {n: p.detach().clone() for n, p in reshard(self.net).named_parameters()}
        self.emas[name].copy_to(self.net)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in reshard(self.net).named_parameters():  # FSDP: back to the shards first
                    p.copy_(live[n])

