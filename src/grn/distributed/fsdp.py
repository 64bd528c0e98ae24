"""FSDP2 for GRN: ``parallelize`` (activation checkpointing → optional compile → ``fully_shard`` per block →
root) and :class:`FSDP2Strategy`, Lightning's ``ModelParallelStrategy`` set up for pure data parallelism.

Lightning's ``FSDPStrategy`` (FSDP1) is GPU-only; ``fully_shard`` runs on CPU with gloo too, so the same code path
is tested in CI. LightningModules call :func:`shard_module` from ``configure_model`` with the sub-networks they
train; frozen helpers (LPIPS trunk, frozen tokenizer) are never passed, so they stay whole on every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from grn.distributed.shards import is_sharded, reshard

log = logging.getLogger(__name__)

__all__ = ["FSDP2Strategy", "default_blocks", "is_sharded", "parallelize", "reshard", "shard_module"]


def default_blocks(module: nn.Module) -> list[nn.Module]:
    """The outermost elements of ``nn.ModuleList`` containers inside ``module`` (transformer blocks, tokenizer
    stages): the units that get their own ``fully_shard`` group, so parameters are gathered one block at a time."""
    blocks: list[nn.Module] = []
    taken: set[str] = set()
    for name, child in module.named_modules():
        if any(name.startswith(t + ".") for t in taken):
            continue  # inside a block already chosen
        if isinstance(child, nn.ModuleList):
            for i, block in enumerate(child):
                if any(p.requires_grad for p in block.parameters()):
                    blocks.append(block)
                    taken.add(f"{name}.{i}" if name else str(i))
    return blocks


def parallelize(
    module: nn.Module,
    mesh,
    blocks: Sequence[nn.Module] | None = None,
    activation_checkpointing: bool = False,
    compile: bool = False,
    mp_policy=None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Shard ``module`` in place over the 1-D data-parallel ``mesh``; returns it.

    Order matters: activation checkpointing wraps each block first (so recomputation happens inside the shard's
    unsharded window), then each block is compiled (``nn.Module.compile`` keeps the module object, so
    ``fully_shard`` sees the same tree), then every block gets its own ``fully_shard`` group and finally the root
    takes the remaining parameters (embeddings, heads).
    """
    from torch.distributed.fsdp import fully_shard

    blocks = list(default_blocks(module) if blocks is None else blocks)
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for block in blocks:
            checkpoint(block)
    if compile:
        for block in blocks:
            block.compile()
    kwargs: dict[str, Any] = {"mesh": mesh}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(module, **kwargs)
    return module


def shard_module(
    lightning_module, trained: Iterable[nn.Module], emas: Iterable[tuple[nn.Module, nn.Module]] = ()
) -> bool:
    """Called from ``configure_model``: shard each trained network when the trainer uses :class:`FSDP2Strategy`,
    and re-lay each ``(ema, network)`` pair's shadows as shards matching the network's; a no-op under DDP or
    one device, and on a second call. Returns True if the networks are sharded."""
    trainer = getattr(lightning_module, "_trainer", None)
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    if not isinstance(strategy, FSDP2Strategy):
        if isinstance(strategy, ModelParallelStrategy):
            raise TypeError("use grn.distributed.fsdp.FSDP2Strategy (trainer=fsdp), not ModelParallelStrategy")
        return False
    trained = list(trained)
    if all(is_sharded(net) for net in trained):
        return True
    for net in trained:
        strategy.parallelize(net)
    for ema, net in emas:
        ema.shard_like(net)
    return True


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallelism (FSDP2) over all ranks: Lightning's ``ModelParallelStrategy`` with
    ``data_parallel_size = world size`` and no tensor parallelism.

    Args:
        activation_checkpointing: recompute each block's activations in backward (saves memory).
        compile: ``torch.compile`` each block (after checkpointing, before sharding).
        mixed_precision: ``"bf16"``: bf16 parameters/compute, fp32 gradient reduction; ``None``: fp32;
            ``"auto"``: bf16 on CUDA, fp32 elsewhere. Use with ``trainer.precision=32-true`` (the policy does
            the casting, not autocast).
        save_distributed_checkpoint: each rank writes its shards (``torch.distributed.checkpoint``, reshardable
            on load); False gathers a single file on rank 0 (memory-hungry for large models).
        reshard_after_forward: free each block's gathered parameters after its forward (ZeRO-3); False keeps
            them until backward (ZeRO-2-like, faster, more memory).
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        compile: bool = False,
        mixed_precision: Literal["auto", "bf16"] | None = "auto",
        save_distributed_checkpoint: bool = True,
        reshard_after_forward: bool = True,
        process_group_backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size="auto",
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            **kwargs,
        )
        if mixed_precision not in ("auto", "bf16", None):
            raise ValueError(f"mixed_precision must be 'auto', 'bf16' or null, got {mixed_precision!r}")
        self.activation_checkpointing = bool(activation_checkpointing)
        self.compile = bool(compile)
        self.mixed_precision = mixed_precision
        self.reshard_after_forward = bool(reshard_after_forward)

    def setup_environment(self) -> None:
        # pure data parallelism: every rank holds a shard; ModelParallelStrategy's "auto" would make the ranks of
        # a node a tensor-parallel group instead
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def mp_policy(self):
        """bf16 parameters with fp32 gradient reduction on CUDA (``"auto"``/``"bf16"``), else None."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        use_bf16 = self.mixed_precision == "bf16" or (
            self.mixed_precision == "auto" and self.root_device.type == "cuda"
        )
        if not use_bf16:
            return None
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)

    def parallelize(self, module: nn.Module) -> nn.Module:
        return parallelize(
            module,
            self.device_mesh["data_parallel"],
            activation_checkpointing=self.activation_checkpointing,
            compile=self.compile,
            mp_policy=self.mp_policy(),
            reshard_after_forward=self.reshard_after_forward,
        )
