"""Video shards: PyAV decoding by seeking equals decoding from frame 0; clip timing; DataModule batches."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch

from grn.datamodules.bad_samples import BadSample
from grn.datamodules.builtin import builtin_video_shards
from grn.datamodules.video import VideoShardDataModule, check_num_frames, decode_clip, encode_mp4, probe_video
from grn.datamodules.writers import write_shards


def _counter_video(num_frames=48, fps=12):
    """Frame i is a flat grey of value 5·i, so a decoded frame tells its source index."""
    frames = np.stack([np.full((32, 48, 3), 5 * i, np.uint8) for i in range(num_frames)])
    return encode_mp4(frames, fps, gop=8)


def _index_of(frames):
    return (frames[:, 8:24, 8:40].astype(np.float64).mean(axis=(1, 2, 3)) / 5).round().astype(int).tolist()


def _reference_clip(data, start_s, num_frames, fps):
    """Decode every frame from frame 0 and pick the one on screen at each target time (what seeking must match)."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        frames = [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]
        src_fps = float(s.average_rate)
    times = np.array([t for t, _ in frames])
    out = []
    for j in range(num_frames):
        target = start_s + j / fps
        k = int(np.searchsorted(times, target + 0.5 / src_fps, side="right")) - 1
        out.append(frames[max(k, 0)][1])
    return np.stack(out)


def test_probe_and_num_frames_rule():
    info = probe_video(_counter_video())
    assert info["fps"] == 12 and info["num_frames"] == 48 and info["duration"] == pytest.approx(4.0)
    assert [check_num_frames(n) for n in (1, 5, 17)] == [1, 5, 17]
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        check_num_frames(16)


@pytest.mark.parametrize(("start", "n", "fps"), [(0.0, 9, 12.0), (2.0, 9, 6.0), (1.3, 17, 16.0), (0.5, 5, 4.0)])
def test_seeking_matches_decoding_from_frame_zero(start, n, fps):
    data = _counter_video()
    stats = {}
    clip = decode_clip(data, start, n, fps, stats)
    assert clip.shape == (n, 32, 48, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, _reference_clip(data, start, n, fps))
    expected = [min(47, round((start + j / fps) * 12)) for j in range(n)]
    assert _index_of(clip) == expected
    if start >= 2.0:  # it seeked: far fewer frames decoded than reading from frame 0 up to the clip end
        assert stats["decoded"] < round((start + (n - 1) / fps) * 12) - 8


def test_clip_past_the_end_and_garbage_are_bad_samples():
    data = _counter_video()
    with pytest.raises(BadSample, match="ends before the clip"):
        decode_clip(data, 3.5, 9, 6.0)
    with pytest.raises(BadSample) as err:
        decode_clip(b"definitely not an mp4", 0.0, 5, 8.0)
    assert err.value.reason == "decode_video"


def test_video_datamodule_batches_respect_frame_range(tmp_path):
    data = _counter_video()
    # frames 24..47 only (2 s .. 4 s), labelled
    samples = [{"__key__": f"v{i}", "mp4": data, "cls": i % 3,
                "json": {"begin_frame_id": 24, "end_frame_id": 48, "fps": 12}} for i in range(6)]
    write_shards(samples, tmp_path, max_count=3)
    dm = VideoShardDataModule(train_shards=str(tmp_path / "shard-{000000..000001}.tar"), num_frames=9, fps=12,
                              size=(16, 24), labelled=True, num_classes=3, batch_size=2, resampled=True,
                              epoch_samples=6, shuffle_buffer=0)
    batches = [dm.record(b) for b in dm.train_dataloader()]
    assert len(batches) == 3
    video = batches[0]["video"]
    assert video.shape == (2, 3, 9, 16, 24) and video.dtype == torch.float32
    assert batches[0]["label"].dtype == torch.int64
    grey = ((video[:, 0, :, 4:12, 4:20].mean(dim=(-1, -2)) + 1) * 127.5 / 5).round()  # [B, T] source indices
    assert (grey >= 24).all() and (grey <= 47).all()
    assert torch.equal(grey[:, 1:] - grey[:, :-1], torch.ones(2, 8))  # consecutive frames at the source rate


def test_builtin_gif_video_shards(tmp_path):
    dm = builtin_video_shards(cache_dir=str(tmp_path), num_frames=17, fps=12, size=(32, 32), batch_size=2,
                              epoch_samples=2)
    batch = dm.record(next(iter(dm.train_dataloader())))
    assert batch["video"].shape == (2, 3, 17, 32, 32)
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    # a real animation: consecutive frames differ, and the clip is not a still
    assert (batch["video"][:, :, 1:] - batch["video"][:, :, :-1]).abs().mean() > 0.01
