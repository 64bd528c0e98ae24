"""Built-in real sets as shards, generated once into the data cache."""

from __future__ import annotations

from pathlib import Path

import torch

from grn.datamodules.builtin import builtin_image_shards, builtin_shards, load_digits_split
from grn.datamodules.wds import expand_shards


def test_digits_shards_hold_the_fixed_split_and_are_generated_once(tmp_path):
    patterns = builtin_shards("digits", str(tmp_path))
    urls = expand_shards(patterns["train"])[0]
    stamps = [p.stat().st_mtime_ns for p in map(Path, urls)]
    assert builtin_shards("digits", str(tmp_path)) == patterns  # second call: found, not rewritten
    assert [p.stat().st_mtime_ns for p in map(Path, urls)] == stamps
    assert not [p for p in (tmp_path / "shards").iterdir() if p.name.startswith(".")]  # no temp folder left

    dm = builtin_image_shards("digits", cache_dir=str(tmp_path), flip=False, batch_size=360, resampled=False,
                              shuffle_buffer=0, drop_last=False)
    val = [b for b in map(dm.record, dm.val_dataloader())]
    images = torch.cat([b["image"] for b in val])
    order = torch.tensor([int(k.rsplit("_", 1)[1]) for b in val for k in b["key"]])
    x, y = load_digits_split("val", image_size=32)
    assert images.shape == (360, 3, 32, 32)
    assert torch.equal(torch.cat([b["label"] for b in val]), y[order])
    assert (images - x[order]).abs().max() <= 1 / 127.5 + 1e-6  # the same digits, stored as 8-bit PNG


def test_photo_shards_are_labelled_real_crops(tmp_path):
    dm = builtin_image_shards("photos", cache_dir=str(tmp_path), batch_size=16, epoch_samples=16, seed=0)
    batch = dm.record(next(iter(dm.train_dataloader())))
    assert batch["image"].shape == (16, 3, 64, 64) and dm.num_classes >= 5
    assert batch["label"].max() < dm.num_classes and len(set(batch["label"].tolist())) > 1
    assert batch["image"].std() > 0.1  # real photo content, not flat
