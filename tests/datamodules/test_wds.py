"""The shard pipeline: patterns, determinism, equal batches per rank, start-up checks, exact resume."""

from __future__ import annotations

import itertools

import pytest
import torch

from grn.datamodules.images import ImageShardDataModule
from grn.datamodules.wds import Batcher, ShardStream, expand_shards


def _dm(pattern, **kw):
    args = dict(train_shards=pattern, image_size=16, batch_size=4, num_workers=0, resampled=True,
                epoch_samples=40, shuffle_buffer=20, shuffle_initial=10, num_classes=10, seed=0)
    args.update(kw)
    return ImageShardDataModule(**args)


def _keys(dm, loader, n=None):
    out = []
    for batch in itertools.islice(loader, n):
        dm.record(batch)
        out.append(tuple(batch["key"]))
    return out


def test_expand_shards_braces_sources_weights_and_missing(digit_shards, tmp_path):
    urls, w = expand_shards(digit_shards)
    assert len(urls) == 8 and urls == sorted(urls) and w == pytest.approx([1 / 8] * 8)
    first_two = digit_shards.replace("{000000..000007}", "{000000..000001}")
    urls, w = expand_shards(f"{first_two}::{digit_shards}", weights=[3, 1])
    assert len(urls) == 10
    # a source's weight is its share of drawn shards, whatever its shard count
    assert sum(w[:2]) == pytest.approx(0.75) and sum(w[2:]) == pytest.approx(0.25)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_shards(str(tmp_path / "nope-{0..3}.tar"))
    with pytest.raises(ValueError, match="weights for"):
        expand_shards(digit_shards, weights=[1, 2])


def test_weighted_sources_are_drawn_in_proportion(digit_shards):
    a = digit_shards.replace("{000000..000007}", "{000000..000001}")
    b = digit_shards.replace("{000000..000007}", "{000002..000007}")
    urls, w = expand_shards([a, b], weights=[3, 1])
    stream = ShardStream(urls, w, lambda s, r: s, lambda: Batcher(1), resampled=True, batches_per_worker=1)
    drawn = list(itertools.islice(stream._shards(0, 1), 4000))
    share_a = sum(u in urls[:2] for u in drawn) / len(drawn)
    assert abs(share_a - 0.75) < 0.03


def test_same_seed_same_batches_and_different_seed_differs(digit_shards):
    a = _keys(_dm(digit_shards), _dm(digit_shards).train_dataloader())
    dm = _dm(digit_shards)
    b = _keys(dm, dm.train_dataloader())
    dm2 = _dm(digit_shards, seed=1)
    c = _keys(dm2, dm2.train_dataloader())
    assert a == b and len(a) == 10
    assert a != c
    batch = next(iter(_dm(digit_shards).train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and -1 <= batch["image"].min() and batch["image"].max() <= 1


def test_successive_epochs_differ_and_shuffle_precedes_decode(digit_shards):
    dm = _dm(digit_shards)
    loader = dm.train_dataloader()
    e0, e1 = _keys(dm, loader), _keys(dm, loader)
    assert len(e0) == len(e1) == 10 and e0 != e1
    # the buffer mixes samples of different shards within one batch (12 samples per shard, keys d<index>)
    shards_in_batches = [len({int(k[1:]) // 12 for k in keys}) for keys in e0]
    assert max(shards_in_batches) > 1


def test_every_rank_yields_the_same_number_of_batches(digit_shards):
    urls, w = expand_shards(digit_shards)
    counts = []
    for rank in range(3):
        stream = ShardStream(urls, w, lambda s, r: {"k": s["__key__"]}, lambda: Batcher(5), resampled=True,
                             batches_per_worker=7, rank=rank, world_size=3, shuffle_buffer=10)
        stream.prepare(epoch=0)
        counts.append(sum(1 for _ in stream))
    assert counts == [7, 7, 7]


def test_finite_mode_splits_shards_by_rank_and_rejects_too_few(digit_shards):
    urls, w = expand_shards(digit_shards)
    seen = []
    for rank in range(2):
        stream = ShardStream(urls, w, lambda s, r: {"k": s["__key__"]}, lambda: Batcher(1, drop_last=False),
                             resampled=False, rank=rank, world_size=2, shuffle_buffer=0)
        seen.append([b["k"][0] for b in stream])
    assert len(seen[0]) == len(seen[1]) == 48 and not set(seen[0]) & set(seen[1])
    dm = _dm(digit_shards, resampled=False, epoch_samples=None, num_workers=9)
    with pytest.raises(ValueError, match="8 shards < 9 workers"):
        dm.train_dataloader()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume_mid_epoch(digit_shards, num_workers):
    """The keys after a restart equal the uninterrupted sequence (across an epoch boundary, too)."""
    full_dm = _dm(digit_shards, num_workers=num_workers)
    loader = full_dm.train_dataloader()
    full = _keys(full_dm, loader) + _keys(full_dm, loader)  # two epochs of 10 batches
    assert len(full) == 20

    for stop in (7, 10):
        dm = _dm(digit_shards, num_workers=num_workers)
        first = _keys(dm, dm.train_dataloader(), stop)
        state = dm.state_dict()
        resumed = _dm(digit_shards, num_workers=num_workers)
        resumed.load_state_dict(state)
        loader = resumed.train_dataloader()
        rest = _keys(resumed, loader)
        if len(first) + len(rest) < 20:  # the interrupted epoch ended early: run the next one
            rest += _keys(resumed, loader)
        assert first + rest == full, f"stop={stop}"
