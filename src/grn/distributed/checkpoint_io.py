"""Checkpoint files that are never half-written: a kill during a save leaves the previous file intact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from grn.io import atomic_torch_save

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with local files written to a temporary name and renamed over the target
    (Lightning's own save streams into the final name, so a SIGKILL mid-write leaves a truncated ``last.ckpt``
    that ``ckpt_path: auto`` would then try to load). Remote paths (``s3://``...) go through Lightning."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, Path(path))
