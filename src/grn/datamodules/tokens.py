"""Token maps for generator training: a pixel dataset encoded once by a frozen tokenizer.

The tokenizer is deterministic, so every image is encoded exactly once at set-up and the generator never touches
pixels during training. Batches: ``{"tokens": int64 [B, d, h, w] index labels, "label": int64 [B]}``.
(Sharded on-disk token caches for large sets are built by ``scripts/cache_tokens.py``.)
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


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


@torch.no_grad()
def encode_dataset(tokenizer: torch.nn.Module, dataset: Dataset, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Encode every ``{"image", "label"}`` item -> ``{"tokens": [N, d, h, w] int64, "label": [N]}`` (order kept)."""
    tokens, labels = [], []
    device = next(tokenizer.parameters()).device
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        tokens.append(tokenizer.encode(batch["image"].to(device), target="index").cpu())
        labels.append(batch["label"])
    return {"tokens": torch.cat(tokens), "label": torch.cat(labels)}


class EncodedDataModule(L.LightningDataModule):
    """Wraps a pixel DataModule (with ``train_set`` / ``val_set`` after ``setup``) and serves its token maps.

    Args:
        source: the pixel DataModule (e.g. :class:`~grn.datamodules.builtin.DigitsDataModule`).
        tokenizer_ckpt: checkpoint of the trained tokenizer (its EMA weights are used).
        batch_size, num_workers, seed: loader settings; the train order is deterministic under ``seed``.
    """

    def __init__(
        self,
        source: L.LightningDataModule,
        tokenizer_ckpt: str,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = True,
    ):
        super().__init__()
        self.source = source
        self.tokenizer_ckpt = tokenizer_ckpt
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from grn.lit_modules.tokenizer import TokenizerLitModule

        if not Path(self.tokenizer_ckpt).is_file():
            raise FileNotFoundError(
                f"tokenizer checkpoint not found: {self.tokenizer_ckpt} (train one with task=tokenizer, "
                "or set the generator stage's tokenizer_ckpt)"
            )
        tokenizer = TokenizerLitModule.load_tokenizer(self.tokenizer_ckpt)
        self.source.setup(stage)
        self.train_set = TensorDictDataset(**encode_dataset(tokenizer, self.source.train_set))
        self.val_set = TensorDictDataset(**encode_dataset(tokenizer, self.source.val_set))

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            generator=g,
            num_workers=self.num_workers,
            drop_last=self.drop_last,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
