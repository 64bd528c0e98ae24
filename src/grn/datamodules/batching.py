"""Grouping decoded samples into batches (the base :class:`Batcher`, which bucket batchers extend)."""

from __future__ import annotations

from typing import Any

from torch.utils.data._utils.collate import default_collate


class Batcher:
    """Groups decoded samples into batches of ``batch_size``; ``pending`` are raw indices not yet in a batch.

    Subclasses (aspect-ratio buckets) override :meth:`add`; the contract is that :meth:`add` returns the batches
    that became full, each as a list of samples, and :meth:`pending` the raw indices of samples held back.
    """

    def __init__(self, batch_size: int, drop_last: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self._buf: list[tuple[int, dict]] = []

    def add(self, index: int, sample: dict) -> list[list[dict]]:
        self._buf.append((index, sample))
        if len(self._buf) < self.batch_size:
            return []
        out, self._buf = [s for _, s in self._buf], []
        return [out]

    def flush(self) -> list[list[dict]]:
        """At the end of a finite stream: the last, partial batch unless ``drop_last``."""
        out, self._buf = [s for _, s in self._buf], []
        return [out] if out and not self.drop_last else []

    def pending(self) -> list[int]:
        return [i for i, _ in self._buf]

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """One batch from its samples; subclasses pad variable-length fields (text features)."""
        return collate(samples)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors / numbers; strings (captions, keys) stay lists."""
    return default_collate(samples)

