"""EncodedDataModule over a shard source: tokens cached once on disk, read as token shards, resumable."""

from __future__ import annotations

import torch

from grn.datamodules.images import ImageShardDataModule
from grn.datamodules.tokens import EncodedDataModule

from shard_helpers import fit_keys, tiny_tokenizer_ckpt


def _tokens_as_cached(batch):
    assert batch["tokens"].dtype == torch.int64 and batch["tokens"].shape[1:] == (4, 8, 8)


def _fit(dm, max_steps, root, ckpt_path=None, every=None):
    return fit_keys(dm, max_steps, root, ckpt_path=ckpt_path, every=every, check=_tokens_as_cached)


def test_shard_source_is_encoded_once_and_resumes_exactly(tmp_path, monkeypatch, digit_shards):
    ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt")

    def dm():
        source = ImageShardDataModule(train_shards=digit_shards, image_size=32, num_classes=10, batch_size=64,
                                      resampled=True, epoch_samples=64, shuffle_buffer=32)
        return EncodedDataModule(source, str(ckpt), batch_size=8, seed=0, cache_dir=str(tmp_path),
                                 encode_batch_size=96)

    first = dm()
    assert first.num_classes == 10
    full = _fit(first, 6, tmp_path / "a")
    assert len(full) == 48 and first.tokens is not None
    caches = list((tmp_path / "tokens").iterdir())
    assert len(caches) == 1 and (caches[0] / "meta.json").is_file()

    # later runs reuse the cache: the tokenizer is never loaded again
    from grn import checkpoints

    def no_tokenizer(*a, **k):
        raise AssertionError("the token cache should have been reused")

    monkeypatch.setattr(checkpoints, "load_tokenizer", no_tokenizer)
    part = _fit(dm(), 4, tmp_path / "b", every=4)
    rest = _fit(dm(), 6, tmp_path / "c", ckpt_path=tmp_path / "b" / "step=4.ckpt")
    assert part + rest == full


def test_token_flip_follows_the_source(digit_shards):
    def encoded(**kw):
        src = ImageShardDataModule(train_shards=digit_shards, image_size=32, num_classes=10, resampled=False, **kw)
        return EncodedDataModule(src, "unused.ckpt")

    assert encoded(flip=True).flip and not encoded(flip=False).flip  # digits stay unmirrored
    src = ImageShardDataModule(train_shards=digit_shards, image_size=32, num_classes=10, flip=False, resampled=False)
    assert EncodedDataModule(src, "unused.ckpt", flip=True).flip
