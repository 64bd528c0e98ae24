"""Injected bad samples of every kind are skipped, counted exactly, logged as a metric; training goes on."""

from __future__ import annotations

import logging
import tarfile

import lightning as L
import numpy as np
import pytest

from grn.datamodules.bad_samples import BAD_REASONS, BadSample, BadSampleCounter, BadSampleLogger
from grn.datamodules.images import ImageShardDataModule
from grn.datamodules.video import VideoShardDataModule, encode_mp4
from grn.datamodules.writers import write_shards

from shard_helpers import bad_counts, digit_png_samples, key_recorder


def _trainer(tmp_path, **kw):
    return L.Trainer(accelerator="cpu", devices=1, logger=L.pytorch.loggers.CSVLogger(tmp_path), enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, **kw)


def _bad_image_shards(out):
    """Shard 0: 10 good digits + an undecodable image + a sample missing its image + a label of the wrong type.
    Shard 1: 10 good digits, cut inside the 6th sample's image (one truncated tar; 5 samples survive)."""
    good = list(digit_png_samples(20))
    shard0 = good[:10] + [
        {"__key__": "bad_decode", "png": b"\x89PNG not really", "cls": 1},
        {"__key__": "bad_missing", "cls": 2},
        {"__key__": "bad_type", "png": good[0]["png"], "cls": "seven"},
    ]
    write_shards(shard0, out / "a", max_count=100)
    write_shards(good[10:], out / "b", max_count=100)
    path = out / "b" / "shard-000000.tar"
    members = list(tarfile.open(path))
    sixth_png = next(m for m in members if m.name == f"{good[15]['__key__']}.png")
    path.write_bytes(path.read_bytes()[: sixth_png.offset_data + 100])
    return [str(out / "a" / "shard-000000.tar"), str(out / "b" / "shard-000000.tar")]


def test_each_bad_kind_is_counted_exactly_and_training_continues(tmp_path):
    shards = _bad_image_shards(tmp_path)
    dm = ImageShardDataModule(train_shards=shards, image_size=16, num_classes=10, batch_size=3, resampled=False,
                              shuffle_buffer=0, drop_last=False, num_workers=0)
    model = key_recorder()
    _trainer(tmp_path, max_epochs=1, callbacks=[BadSampleLogger()], log_every_n_steps=1).fit(model, datamodule=dm)
    # every good sample before the damage was trained on: 10 from shard a, 5 from the truncated shard b
    assert sorted(model.keys) == sorted([f"d{i:06d}" for i in range(15)])
    assert dm.bad_samples == bad_counts(truncated_tar=1, decode_image=1, missing_key=1, wrong_type=1)
    # ... and the counts reached the logger as data/bad_<reason>
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header, last = logged[0].split(","), logged[-1].split(",")
    for reason in BAD_REASONS:
        assert f"data/bad_{reason}" in header
    assert float(last[header.index("data/bad_truncated_tar")]) == 1.0


def test_counts_are_summed_over_workers_and_survive_resume(tmp_path):
    shards = _bad_image_shards(tmp_path)
    kw = dict(train_shards=shards, image_size=16, num_classes=10, batch_size=2, resampled=False, shuffle_buffer=0,
              drop_last=False, num_workers=2)
    dm = ImageShardDataModule(**kw)
    for batch in dm.train_dataloader():
        dm.record(batch)
    assert dm.bad_samples == bad_counts(truncated_tar=1, decode_image=1, missing_key=1, wrong_type=1)
    # a second epoch adds the same again
    for batch in dm.train_dataloader():
        dm.record(batch)
    assert dm.bad_samples["decode_image"] == 2 and dm.bad_samples["truncated_tar"] == 2


def test_undecodable_video_and_wrong_json_are_counted(tmp_path):
    frames = np.stack([np.full((16, 16, 3), 10 * i, np.uint8) for i in range(12)])
    good = encode_mp4(frames, 12)
    samples = [{"__key__": f"v{i}", "mp4": good} for i in range(4)] + [
        {"__key__": "bad_video", "mp4": b"\x00\x00\x00 ftypmp42 broken"},
        {"__key__": "bad_json", "mp4": good, "json": b"{not json"},
        {"__key__": "no_mp4", "json": b"{}"},
    ]
    write_shards(samples, tmp_path, max_count=100)
    dm = VideoShardDataModule(train_shards=str(tmp_path / "shard-000000.tar"), num_frames=5, fps=12, size=(16, 16),
                              batch_size=2, resampled=False, shuffle_buffer=0, drop_last=False)
    model = key_recorder()
    _trainer(tmp_path, max_epochs=1).fit(model, datamodule=dm)
    assert sorted(model.keys) == ["v0", "v1", "v2", "v3"]
    assert dm.bad_samples == bad_counts(decode_video=1, missing_key=1, wrong_type=1)


def test_logging_is_rate_limited(caplog):
    counter = BadSampleCounter(log_every_s=3600, where="test")
    with caplog.at_level(logging.WARNING, logger="grn.datamodules.bad_samples"):
        for _ in range(50):
            counter.add("decode_image", "x")
        counter.add("missing_key", "y")
    assert counter.counts["decode_image"] == 50 and counter.counts["missing_key"] == 1
    assert len(caplog.records) == 2  # the first of each reason, nothing else within the interval
    with pytest.raises(ValueError, match="unknown bad-sample reason"):
        BadSample("oops")


@pytest.mark.parametrize("stop", [1, 3, 5])
def test_counts_are_exact_across_a_resume(tmp_path, stop):
    shards = _bad_image_shards(tmp_path)
    kw = dict(train_shards=shards, image_size=16, num_classes=10, batch_size=2, resampled=False,
              shuffle_buffer=4, shuffle_initial=2, drop_last=False, num_workers=0)
    full = ImageShardDataModule(**kw)
    full_keys = [k for b in full.train_dataloader() for k in full.record(b)["key"]]
    first = ImageShardDataModule(**kw)
    loader = iter(first.train_dataloader())
    keys = [k for _ in range(stop) for k in first.record(next(loader))["key"]]
    resumed = ImageShardDataModule(**kw)
    resumed.load_state_dict(first.state_dict())
    keys += [k for b in resumed.train_dataloader() for k in resumed.record(b)["key"]]
    assert keys == full_keys
    assert resumed.bad_samples == full.bad_samples == bad_counts(truncated_tar=1, decode_image=1, missing_key=1,
                                                                 wrong_type=1)
