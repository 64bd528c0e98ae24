"""Aspect-ratio buckets (official table), caption rules, text–image / text–video batches, resume with buckets."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from grn.datamodules.bad_samples import BadSample
from grn.datamodules.buckets import bucket_pixels, nearest_template
from grn.datamodules.text import TextImageDataModule, TextVideoDataModule, image_caption, video_caption
from grn.datamodules.video import encode_mp4
from grn.datamodules.writers import write_shards


@pytest.mark.parametrize(
    ("pn", "ratio", "pixels"),
    [("0.06M", 1.0, (256, 256)), ("0.06M", 9 / 16, (192, 336)), ("0.06M", 0.75, (224, 288)),
     ("0.41M", 9 / 16, (480, 848)), ("0.41M", 16 / 9, (848, 480)), ("0.41M", 0.75, (560, 736)),
     ("1M", 1.0, (1024, 1024)), ("1M", 9 / 16, (768, 1360)), ("2M", 9 / 16, (1088, 1920)), ("2M", 0.75, (1248, 1664))],
)
def test_bucket_pixels_match_the_official_table(pn, ratio, pixels):
    assert bucket_pixels(ratio, pn) == pixels


def test_nearest_template():
    assert nearest_template(0.56) == 9 / 16 and nearest_template(1.78) == 16 / 9 and nearest_template(1.02) == 1.0
    assert nearest_template(10.0) == 3.0
    with pytest.raises(ValueError):
        nearest_template(0.0)


def test_caption_rules():
    rng = random.Random(0)
    line = {"long_caption": "A long caption.", "text": "short"}
    picks = [image_caption(line, rng) for _ in range(2000)]
    assert 0.17 < picks.count("short") / len(picks) < 0.23  # short_caption_prob = 0.2
    assert image_caption({"long_caption": "", "text": "short"}, rng) == "short"
    with pytest.raises(BadSample):
        image_caption({}, rng)
    video = {"tarsier2_caption": "T", "MiniCPM_V_2_6_caption": "M", "quality_prompt": "high quality."}
    picks = [video_caption(video, rng) for _ in range(1000)]
    assert set(picks) == {"T high quality.", "M high quality."} and 0.45 < picks.count("T high quality.") / 1000 < 0.55
    with pytest.raises(BadSample) as err:
        video_caption({"MiniCPM_V_2_6_caption": "M"}, rng)
    assert err.value.reason == "missing_key"


def _jpeg(h, w, value):
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _text_image_shards(tmp_path):
    shapes = [(64, 64), (36, 64), (64, 36), (48, 64)] * 6  # square, landscape 9:16, portrait, 3:4
    samples = [{"__key__": f"t{i:03d}", "jpg": _jpeg(h, w, 10 * i % 250),
                "json": {"long_caption": f"image {i}", "text": f"s{i}"}} for i, (h, w) in enumerate(shapes)]
    write_shards(samples, tmp_path, max_count=6)
    return str(tmp_path / "shard-{000000..000003}.tar")


def _text_dm(pattern, **kw):
    args = dict(train_shards=pattern, pn=4, stride=8, batch_size=3, resampled=True, epoch_samples=18,
                shuffle_buffer=8, shuffle_initial=4, seed=0)
    args.update(kw)
    return TextImageDataModule(**args)


def test_text_image_batches_never_mix_buckets(tmp_path):
    dm = _text_dm(_text_image_shards(tmp_path))
    batches = [dm.record(b) for b in dm.train_dataloader()]
    assert len(batches) == 6
    shapes = {tuple(b["image"].shape[-2:]) for b in batches}
    # side 4 tokens of stride 8: square 32², landscape 0.562 -> 24×40, portrait 1.777 -> 40×24, 0.75 -> 24×32 (etc.)
    assert shapes <= {bucket_pixels(r, 4, 8) for r in (1.0, 9 / 16, 16 / 9, 0.75)} and len(shapes) > 1
    for b in batches:
        assert b["image"].shape[0] == 3 and len(b["caption"]) == 3 and all(isinstance(c, str) for c in b["caption"])


def test_bucketed_resume_is_exact(tmp_path):
    pattern = _text_image_shards(tmp_path)
    full_dm = _text_dm(pattern)
    loader = full_dm.train_dataloader()
    full = [tuple(full_dm.record(b)["key"]) for b in loader] + [tuple(full_dm.record(b)["key"]) for b in loader]
    waiting = []
    for stop in range(1, 6):
        dm = _text_dm(pattern)
        it = iter(dm.train_dataloader())
        first = [tuple(dm.record(next(it))["key"]) for _ in range(stop)]
        waiting.append(len(dm.state_dict()["workers"][0]["pending"]))
        resumed = _text_dm(pattern)
        resumed.load_state_dict(dm.state_dict())
        loader = resumed.train_dataloader()
        rest = [tuple(resumed.record(b)["key"]) for b in loader] + [tuple(resumed.record(b)["key"]) for b in loader]
        assert first + rest == full
    assert max(waiting) > 0  # some stops had samples waiting in other buckets: those were restored too


def test_text_video_batches(tmp_path):
    frames = np.stack([np.full((36, 64, 3), 7 * i, np.uint8) for i in range(24)])
    data = encode_mp4(frames, 12)
    lines = [{"tarsier2_caption": f"clip {i}", "begin_frame_id": 0, "end_frame_id": 24, "fps": 12,
              "height": 36, "width": 64} for i in range(4)]
    write_shards([{"__key__": f"v{i}", "mp4": data, "json": json.dumps(m)} for i, m in enumerate(lines)], tmp_path)
    dm = TextVideoDataModule(train_shards=str(tmp_path / "shard-000000.tar"), num_frames=9, fps=8, pn=4, stride=8,
                             batch_size=2, resampled=True, epoch_samples=4, shuffle_buffer=0)
    batch = dm.record(next(iter(dm.train_dataloader())))
    assert batch["video"].shape == (2, 3, 9, *bucket_pixels(9 / 16, 4, 8))
    assert batch["caption"] == ["clip 0", "clip 1"]


def test_clip_frames_follow_the_official_duration_rule():
    from grn.datamodules.text import clip_frames

    assert clip_frames(2.2, 16, 81) == 33 and clip_frames(1.6, 16, 81) == 33  # rounded to whole seconds
    assert clip_frames(9.0, 16, 81) == 81                                     # capped (official: at most 81)
    assert clip_frames(2.0, 10, 81) == 21 and clip_frames(3.0, 10, 81) == 29  # 31 -> 1 + 4k below it
    with pytest.raises(BadSample) as err:
        clip_frames(0.4, 16, 81)
    assert err.value.reason == "too_short"


def test_per_clip_durations_give_batches_of_one_length(tmp_path):
    """durations=per_clip: 1 s and 2 s videos become 9- and 17-frame clips at 8 fps; a batch never mixes them;
    a video under the minimum duration is skipped and counted."""
    frames = np.stack([np.full((32, 32, 3), 9 * i, np.uint8) for i in range(24)])
    data = encode_mp4(frames, 8)  # 3 s at 8 fps
    lengths = [8, 16, 8, 16, 8, 16, 8, 16, 3]  # source frames used: 1 s or 2 s; the last is 0.375 s
    samples = [{"__key__": f"v{i}", "mp4": data, "json": json.dumps(
        {"tarsier2_caption": f"clip {i}", "begin_frame_id": 0, "end_frame_id": n, "fps": 8})}
        for i, n in enumerate(lengths)]
    write_shards(samples, tmp_path)
    dm = TextVideoDataModule(train_shards=str(tmp_path / "shard-000000.tar"), num_frames=33, fps=8, pn=4, stride=8,
                             durations="per_clip", batch_size=2, resampled=False, shuffle_buffer=0, drop_last=False)
    batches = [dm.record(b) for b in dm.train_dataloader()]
    seen = {}
    for b in batches:
        for key in b["key"]:
            seen[key] = b["video"].shape[2]
    assert seen == {f"v{i}": 9 if n == 8 else 17 for i, n in enumerate(lengths[:-1])}
    assert dm.bad_samples["too_short"] == 1
