"""Exponential moving average of a module's parameters, kept as buffers so it is checkpointed with the module.

Pure torch (no Lightning): the Lightning modules train with it, and the checkpoint format
(:mod:`grn.checkpoints.layout`) names its buffers with :func:`shadow_key`.
"""

from __future__ import annotations

import torch
from torch import nn

from grn.distributed.shards import reshard

__all__ = ["EMA", "shadow_key"]


def shadow_key(name: str) -> str:
    """The buffer name of parameter ``name``'s average: ``blocks.0.w`` -> ``shadow__blocks__0__w`` (a buffer name
    cannot hold dots)."""
    return "shadow__" + name.replace(".", "__")


class EMA(nn.Module):
    """Shadow copy of ``model``'s floating-point parameters.

    The shadow tensors are float32 registered buffers named by :func:`shadow_key`, beside an int64 scalar
    ``num_updates``, so they travel with ``.to()``, land in ``state_dict()`` and are restored by
    ``load_state_dict()``.

    Args:
        model: the trained module (only read).
        decay: EMA decay per update.
        warmup: if true, the effective decay is ``min(decay, (1 + n) / (10 + n))`` after n updates, so a short run
            is not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.names = [n for n, p in model.named_parameters() if p.dtype.is_floating_point]
        for name, p in model.named_parameters():
            if p.dtype.is_floating_point:
                self.register_buffer(shadow_key(name), p.detach().clone().float())
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def _shadows(self) -> list[torch.Tensor]:
        return [getattr(self, shadow_key(n)) for n in self.names]

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        src = [params[n].detach().float() for n in self.names]
        # lerp towards the live weights: shadow += (1 - decay) * (param - shadow), one fused call for all tensors
        torch._foreach_lerp_(self._shadows(), src, 1.0 - self.current_decay())
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (in place)."""
        params = dict(reshard(model).named_parameters())  # FSDP: the shards, not gathered copies
        for n, s in zip(self.names, self._shadows()):
            params[n].copy_(s.to(params[n].dtype))

    @torch.no_grad()
    def shard_like(self, model: nn.Module) -> None:
        """After ``fully_shard(model)``: turn each shadow into a DTensor laid out like its parameter, so updates
        stay local to the shard and distributed checkpoints save (and reshard) the EMA with the weights."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        params = dict(model.named_parameters())
        for n in self.names:
            p, key = params[n], shadow_key(n)
            if isinstance(p, DTensor) and not isinstance(getattr(self, key), DTensor):
                shadow = getattr(self, key).to(p.device_mesh.device_type)
                setattr(self, key, distribute_tensor(shadow, p.device_mesh, p.placements))

    def state_dict_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A state dict of ``model`` with the averaged parameters in place of the live ones."""
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for n, s in zip(self.names, self._shadows()):
            sd[n] = s.to(sd[n].dtype).clone()
        return sd
