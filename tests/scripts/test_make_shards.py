"""scripts/make_shards.py: image folder and jsonl lines → shards; sources are never modified or deleted."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grn.datamodules.images import ImageShardDataModule
from grn.datamodules.text import TextImageDataModule, TextVideoDataModule
from grn.datamodules.video import encode_mp4

from script_loader import load_script



def _script():
    return load_script("make_shards")


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under root: (sha256, mtime_ns, mode) — any change, removal or addition shows."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns,
                                       p.stat().st_mode) for p in sorted(root.rglob("*")) if p.is_file()}


def _image(path: Path, h: int, w: int, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def test_image_folder_to_shards_keeps_sources_and_labels(tmp_path):
    src = tmp_path / "imagenet" / "train"
    classes = ["n01", "n02", "n03"]
    for c, name in enumerate(classes):
        for i in range(5):
            _image(src / name / f"img_{i}.v1.JPEG", 40 + 8 * i, 48, 60 * c + 10)
    (src / "n02" / "notes.txt").write_text("not an image")
    for p in src.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o444)  # read-only sources: writing to them would fail loudly
    before = _snapshot(src)

    out = _script().main(["folder", str(src), str(tmp_path / "shards"), "--max-count", "4"])
    assert _snapshot(src) == before  # nothing changed, removed or added
    assert out["num_classes"] == 3 and len(out["shards"]) == 4
    index = json.loads((tmp_path / "shards" / "shard-index.json").read_text())
    assert index["num_samples"] == 15 and index["classes"] == classes
    assert not list((tmp_path / "shards").glob(".*.tmp"))  # no temporary left behind
    with tarfile.open(out["shards"][0]) as tar:
        assert all(m.name.count(".") == 1 for m in tar)  # keys without dots: webdataset groups them right

    dm = ImageShardDataModule(train_shards=str(tmp_path / "shards" / "shard-{000000..000003}.tar"), image_size=32,
                              num_classes=3, flip=False, batch_size=15, resampled=False, shuffle_buffer=0,
                              drop_last=False)
    batch = dm.record(next(iter(dm.train_dataloader())))
    # class c was painted 60c + 10: the label matches the pixels of every image
    grey = ((batch["image"].mean(dim=(1, 2, 3)) + 1) * 127.5).round()
    assert torch.allclose(grey, batch["label"].float() * 60 + 10, atol=1.5)
    # the folder order was shuffled: the first shard mixes classes
    with tarfile.open(out["shards"][0]) as tar:
        labels = {tar.extractfile(m).read() for m in tar if m.name.endswith(".cls")}
    assert len(labels) > 1


def test_jsonl_lines_to_text_image_and_text_video_shards(tmp_path):
    media = tmp_path / "media"
    _image(media / "a.jpg", 36, 64, 100)
    _image(media / "b.png", 64, 64, 50)
    frames = np.stack([np.full((36, 64, 3), 5 * i, np.uint8) for i in range(24)])
    (media / "clip.mp4").write_bytes(encode_mp4(frames, 12))
    lines = [
        {"image_path": "media/a.jpg", "long_caption": "a wide grey image", "text": "grey", "height": 36, "width": 64},
        {"image_path": "media/b.png", "long_caption": "a square", "text": "sq"},
        {"image_path": "media/missing.jpg", "long_caption": "gone"},
        {"video_path": str(media / "clip.mp4"), "begin_frame_id": 6, "end_frame_id": 24, "fps": 12,
         "tarsier2_caption": "a fade"},
    ]
    jsonl = tmp_path / "meta.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    before = _snapshot(media)

    out = _script().main(["jsonl", str(jsonl), str(tmp_path / "shards")])
    assert _snapshot(media) == before  # the official loader deletes videos; this one never touches them
    assert out["skipped"] == {"missing_media": 1, "bad_json": 1}
    pattern = str(tmp_path / "shards" / "shard-000000.tar")
    with tarfile.open(pattern) as tar:
        names = sorted(m.name for m in tar)
    assert names == ["000000000.jpg", "000000000.json", "000000001.json", "000000001.png",
                     "000000002.json", "000000002.mp4"]

    images = TextImageDataModule(train_shards=pattern, pn=4, stride=8, short_caption_prob=0.0, batch_size=1,
                                 resampled=False, shuffle_buffer=0, drop_last=False)
    got = {tuple(b["image"].shape[-2:]): b["caption"][0] for b in map(images.record, images.train_dataloader())}
    assert got == {(24, 40): "a wide grey image", (32, 32): "a square"}  # the video counts as missing_key
    assert images.bad_samples["missing_key"] == 1

    videos = TextVideoDataModule(train_shards=pattern, num_frames=5, fps=4, pn=4, stride=8, batch_size=1,
                                 resampled=False, shuffle_buffer=0, drop_last=False)
    batches = [videos.record(b) for b in videos.train_dataloader()]
    assert len(batches) == 1 and batches[0]["caption"] == ["a fade"]
    clip = batches[0]["video"][0]  # [3, 5, 24, 40]; frames 6..23 only: grey >= 5·6
    assert clip.shape == (3, 5, 24, 40)
    assert ((clip.mean(dim=(0, 2, 3)) + 1) * 127.5).min() >= 5 * 6 - 3
    assert videos.bad_samples["missing_key"] == 2  # the two image lines have no tarsier2_caption


def test_builtin_subcommand_writes_into_the_cache(tmp_path):
    out = _script().main(["builtin", "digits", "--cache-dir", str(tmp_path)])
    assert set(out) == {"train", "val"} and str(tmp_path) in out["train"]


def test_write_failure_leaves_no_partial_shard(tmp_path):
    from grn.datamodules.writers import ShardWriter

    with pytest.raises(TypeError, match="cannot write"):
        with ShardWriter(tmp_path) as writer:
            writer.write({"__key__": "a", "txt": "ok"})
            writer.write({"__key__": "b", "bad": object()})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="safe_key"):
        ShardWriter(tmp_path / "x").write({"__key__": "a.b", "txt": "x"})
