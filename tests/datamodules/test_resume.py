"""Exact resume through a real Lightning checkpoint: after a restart the run sees the samples it would have seen."""

from __future__ import annotations

import pytest
import torch

from grn.datamodules.images import ImageShardDataModule

from shard_helpers import fit_keys


def _fit(tmp_path, dm, max_steps, ckpt_path=None, every=None):
    return fit_keys(dm, max_steps, tmp_path / "ckpt", ckpt_path=ckpt_path, every=every)


@pytest.mark.parametrize(("num_workers", "stop"), [(0, 7), (2, 7), (0, 10), (2, 11)])
def test_resume_from_checkpoint_replays_the_uninterrupted_sequence(tmp_path, digit_shards, num_workers, stop):
    def dm():
        return ImageShardDataModule(train_shards=digit_shards, image_size=16, num_classes=10, batch_size=4,
                                    num_workers=num_workers, resampled=True, epoch_samples=40, shuffle_buffer=16,
                                    shuffle_initial=8, seed=3)

    full = _fit(tmp_path / "a", dm(), max_steps=14)  # 10 batches per epoch: crosses into epoch 1
    assert len(full) == 14 * 4
    first = _fit(tmp_path / "b", dm(), max_steps=stop, every=stop)
    assert first == full[: stop * 4]
    ckpt = tmp_path / "b" / "ckpt" / f"step={stop}.ckpt"
    state = torch.load(ckpt, weights_only=True)["ImageShardDataModule"]
    assert (state["epoch"], state["consumed"]) == divmod(stop, 10)  # a finished epoch resumes with the next
    rest = _fit(tmp_path / "c", dm(), max_steps=14, ckpt_path=ckpt)
    assert first + rest == full
