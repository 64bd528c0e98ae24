"""Token maps for generator training: a pixel dataset encoded once by a frozen tokenizer.

The tokenizer is deterministic, so every image is encoded exactly once and the generator never touches pixels
during training. Batches: ``{"tokens": int64 [B, d, h, w] index labels, "label": int64 [B]}``.

Two paths, chosen by the source:

* an in-memory source (``train_set`` / ``val_set``, e.g. the digits) is encoded into memory at set-up;
* a shard source (:class:`~grn.datamodules.wds.ShardDataModule`, e.g. ImageNet shards) is encoded once into an
  on-disk token cache (:mod:`grn.datamodules.token_shards`, keyed by the tokenizer checkpoint's hash and the
  transform; built in ``prepare_data``, reused by later runs) and then read as token shards, with the shard
  pipeline's exact resume and bad-sample counts. ``scripts/cache_tokens.py`` builds the same cache ahead of time.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from grn.datamodules.wds import ShardDataModule


class TensorDictDataset(Dataset):
    """Rows of equally long tensors, returned as dicts."""

    def __init__(self, **tensors: torch.Tensor):
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors have different lengths: { {k: len(v) for k, v in tensors.items()} }")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def pipeline_settings(source: ShardDataModule, num_workers: int | None = None) -> dict:
    """The stream settings a cache reader takes over from the pixel source it replaces (its loader workers too,
    unless ``num_workers`` is given: ``data.num_workers`` is what a user sets)."""
    return {"resampled": source.resampled, "epoch_samples": source.epoch_samples,
            "num_workers": source.num_workers if num_workers is None else int(num_workers),
            "pin_memory": source.pin_memory,
            "shuffle_buffer": source.shuffle_buffer, "shuffle_initial": source.shuffle_initial,
            "log_every_s": source.log_every_s}


@torch.no_grad()
def encode_dataset(tokenizer: torch.nn.Module, dataset: Dataset, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Encode every ``{"image", "label"}`` item -> ``{"tokens": [N, d, h, w] int64, "label": [N]}`` (order kept)."""
    tokens, labels = [], []
    device = next(tokenizer.parameters()).device
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        tokens.append(tokenizer.encode(batch["image"].to(device), target="index").cpu())
        labels.append(batch["label"])
    return {"tokens": torch.cat(tokens), "label": torch.cat(labels)}


class InMemoryLoaders(L.LightningDataModule):
    """Loaders over in-memory ``train_set`` / ``val_set``: a shuffled train loader whose order is fixed by
    ``seed`` (full batches unless ``drop_last`` is false) and an ordered val loader."""

    batch_size: int
    num_workers: int | None
    seed: int
    drop_last: bool = True

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=g,
                          num_workers=self.num_workers or 0, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers or 0)


class CacheReaderMixin:
    """For a DataModule that serves a cache through an inner shard DataModule (``self.tokens``, set by
    :meth:`attach_cache`): the inner one's loaders, data position, exact resume and bad-sample totals. List it
    before the class that provides the in-memory loaders."""

    tokens: ShardDataModule | None = None
    _pending_state: dict | None = None

    def attach_cache(self, reader: ShardDataModule) -> None:
        reader.trainer = self.trainer  # rank and world size for the shard split
        if self._pending_state is not None:
            reader.load_state_dict(self._pending_state)
            self._pending_state = None
        self.tokens = reader

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return self.tokens.record(batch) if self.tokens is not None else batch

    def state_dict(self) -> dict:
        return self.tokens.state_dict() if self.tokens is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.tokens is None:
            self._pending_state = state  # restored before setup: applied when the cache reader exists
        else:
            self.tokens.load_state_dict(state)

    @property
    def bad_samples(self) -> dict[str, int]:
        return self.tokens.bad_samples if self.tokens is not None else {}

    # the cache reader's loaders once attached, else the next class's (in-memory sets)
    def train_dataloader(self) -> DataLoader:
        return self.tokens.train_dataloader() if self.tokens is not None else super().train_dataloader()

    def val_dataloader(self) -> DataLoader:
        return self.tokens.val_dataloader() if self.tokens is not None else super().val_dataloader()


class EncodedDataModule(CacheReaderMixin, InMemoryLoaders):
    """Wraps a pixel DataModule (with ``train_set`` / ``val_set`` after ``setup``) and serves its token maps.

    Args:
        source: the pixel DataModule (e.g. :class:`~grn.datamodules.builtin.DigitsDataModule`).
        tokenizer_ckpt: checkpoint of the trained tokenizer (its EMA weights are used).
        batch_size, num_workers, seed: loader settings; the train order is deterministic under ``seed``.
            ``num_workers`` None: a shard source's own (``data.num_workers``), 0 for in-memory sources.
        cache_dir: data cache root of token caches (shard sources only; default ``$GRN_CACHE_DIR`` or
            ``.cache/grn``).
        flip: shard sources: cache the tokens of both horizontal flips and train on a random one per sample
            (default: as the source's own ``flip``, so digits stay unmirrored).
        encode_batch_size, device: how the cache is encoded (once).
    """

    def __init__(
        self,
        source: L.LightningDataModule,
        tokenizer_ckpt: str,
        batch_size: int = 64,
        num_workers: int | None = None,
        seed: int = 0,
        drop_last: bool = True,
        cache_dir: str | None = None,
        flip: bool | None = None,
        encode_batch_size: int = 64,
        device: str = "cpu",
    ):
        super().__init__()
        self.source, self.tokenizer_ckpt = source, tokenizer_ckpt
        self.batch_size, self.num_workers, self.seed, self.drop_last = batch_size, num_workers, seed, drop_last
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.cache_dir = cache_dir or os.environ.get("GRN_CACHE_DIR", ".cache/grn")
        self.flip = bool(getattr(source, "flip", False)) if flip is None else bool(flip)
        self.encode_batch_size = int(encode_batch_size)
        self.device = device

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def sharded(self) -> bool:
        return isinstance(self.source, ShardDataModule)

    def _check_ckpt(self) -> None:
        if not Path(self.tokenizer_ckpt).is_file():
            raise FileNotFoundError(
                f"tokenizer checkpoint not found: {self.tokenizer_ckpt} (train one with task=tokenizer, "
                "or set the generator stage's tokenizer_ckpt)"
            )

    def _token_cache(self) -> Path:
        from grn.datamodules.token_shards import ensure_token_cache

        self._check_ckpt()
        return ensure_token_cache(self.source, self.tokenizer_ckpt, self.cache_dir, flip=self.flip,
                                  batch_size=self.encode_batch_size, device=self.device)

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node before setup: the cache is encoded once, not per rank
        if self.sharded:
            self._token_cache()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or self.tokens is not None:
            return
        if self.sharded:
            from grn.datamodules.token_shards import TokenShardDataModule

            self.attach_cache(TokenShardDataModule(
                cache=str(self._token_cache()), flip=self.flip, batch_size=self.batch_size,
                seed=self.seed, drop_last=self.drop_last, **pipeline_settings(self.source, self.num_workers),
            ))
            return
        from grn.checkpoints import load_tokenizer

        self._check_ckpt()
        tokenizer = load_tokenizer(self.tokenizer_ckpt)
        self.source.setup(stage)
        self.train_set = TensorDictDataset(**encode_dataset(tokenizer, self.source.train_set))
        self.val_set = TensorDictDataset(**encode_dataset(tokenizer, self.source.val_set))
