"""What code outside the Lightning strategy needs to know about FSDP2 shards (pure torch, no Lightning import):
whether a module was sharded, and how to get its sharded parameters back after a forward. The EMA helper
(:mod:`grn.models.ema`) and the Lightning modules use these; :mod:`grn.distributed.fsdp` builds on them."""

from __future__ import annotations

from torch import nn

__all__ = ["is_sharded", "reshard"]


def is_sharded(module: nn.Module) -> bool:
    """True if ``fully_shard`` was applied to ``module`` (its parameters are DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def reshard(module: nn.Module) -> nn.Module:
    """Free gathered parameters, so ``module.parameters()`` are the sharded DTensors again. Needed before
    swapping weights in or out after a no-grad forward: the root group keeps its parameters gathered after
    forward (it expects a backward), and those plain tensors would otherwise be what ``parameters()`` yields."""
    from torch.distributed.fsdp import FSDPModule

    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()
    return module
