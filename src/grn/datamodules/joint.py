"""Joint image + video training from shards (the official T2V recipe mixes both in every step).

:class:`JointSource` names the pixel sources (``data=text_joint``: text–image and text–video shards, each with its
own buckets, batch size and workers); :class:`JointShards` zips the streams of their caches into batches
``{"image": {...}, "video": {...}}``, the joint format the T2I/T2V trainer (``T2IVLitModule``) trains on.
An epoch lasts as long as the shortest part; each part keeps its own data position, so a resume is exact for
every part, and bad-sample totals add up over the parts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L

from grn.datamodules.wds import ShardDataModule

__all__ = ["JointShards", "JointSource", "ZipLoader"]


class JointSource(L.LightningDataModule):
    """The pixel sources of a joint run, by part name (``image``, ``video``); it loads nothing itself —
    :class:`~grn.datamodules.captioned.EncodedCaptionedDataModule` caches each part and reads them jointly, each
    with its own batch size. ``batch_size`` is only the value a stage config reads as ``${data.batch_size}``."""

    def __init__(self, image: ShardDataModule, video: ShardDataModule, batch_size: int | None = None) -> None:
        super().__init__()
        self.parts: dict[str, ShardDataModule] = {"image": image, "video": video}
        for name, part in self.parts.items():
            if getattr(part, "kind", name) != name:
                raise ValueError(f"the {name} part of a joint source holds {part.kind} data")


class ZipLoader:
    """Iterates several loaders in step: ``{name: batch}`` until the shortest one ends."""

    def __init__(self, loaders: Mapping[str, Any]) -> None:
        self.loaders = dict(loaders)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = list(self.loaders)
        for batches in zip(*(self.loaders[n] for n in names)):
            yield dict(zip(names, batches))

    def __len__(self) -> int:
        return min(len(loader) for loader in self.loaders.values())


class JointShards:
    """Several shard DataModules read in step (the cache readers of a :class:`JointSource`), with the interface
    the cache-serving DataModules use: loaders, ``record``, ``state_dict`` / ``load_state_dict``, ``bad_samples``."""

    def __init__(self, parts: Mapping[str, ShardDataModule]) -> None:
        self.parts = dict(parts)
        self._trainer = None

    @property
    def trainer(self):
        return self._trainer

    @trainer.setter
    def trainer(self, trainer) -> None:  # rank and world size reach every part
        self._trainer = trainer
        for part in self.parts.values():
            part.trainer = trainer

    def train_dataloader(self) -> ZipLoader:
        return ZipLoader({n: p.train_dataloader() for n, p in self.parts.items()})

    def val_dataloader(self) -> ZipLoader | list:
        if any(p.val_shards is None for p in self.parts.values()):
            return []
        return ZipLoader({n: p.val_dataloader() for n, p in self.parts.items()})

    def record(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {n: self.parts[n].record(b) for n, b in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        return {n: p.state_dict() for n, p in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, p in self.parts.items():
            if n in state:
                p.load_state_dict(state[n])

    @property
    def bad_samples(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for part in self.parts.values():
            for reason, n in part.bad_samples.items():
                totals[reason] = totals.get(reason, 0) + n
        return totals
