"""The official toy-data layout (official_update §C12) read as it is — ``data=toy_jsonl data.root=<dir>`` — and
through ``scripts/make_shards.py jsonl`` into text shards. The folder is built from real shipped media: sklearn
digits and skimage photos as images, skimage's GIF as mp4 videos (PyAV), with English and Chinese captions, video
lines of the new caption-list schema and image lines of the image schema, plus bad lines. Sources never change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from grn.datamodules.buckets import bucket_pixels, nearest_template
from grn.datamodules.jsonl import JsonlTextImageDataModule, JsonlTextVideoDataModule
from grn.datamodules.joint import JointSource
from grn.datamodules.skimage_media import raw_gif, raw_photo
from grn.datamodules.text import TextVideoDataModule
from grn.datamodules.video import encode_mp4

from script_loader import load_script

MEDIA = "data/toy_data/media"
QUALITY = ("The quality is very high!", "There is text in the video.")
EN = [{"type": "short", "content": "A cartoon figure turns its head."},
      {"type": "medium", "content": "A small cartoon figure turns its head. The background is plain. It is short."},
      {"type": "long", "content": "A tiny pixel-art figure turns its head to the side. The background stays plain "
                                  "and light. The camera does not move. The clip is very short."}]
ZH = [{"type": "short", "content": "一个卡通人物转过头。"},
      {"type": "medium", "content": "一个小小的卡通人物慢慢转过头，背景是纯色的。"},
      {"type": "long", "content": "一个像素风格的小人物把头转向一侧，背景保持浅色而简单，镜头没有移动，画面很短。"}]
DIGIT = "A white handwritten digit zero on a black background. The stroke is thick. It is centred."
ASTRONAUT = "一位宇航员身穿白色宇航服，站在美国国旗前。她面带微笑。背景是深色的。"
COFFEE = "A cup of coffee on a saucer. The foam has a pattern. The table is red."


def _video_line(name, begin, end, fps, size, caption, quality):
    return {"video_path": f"{MEDIA}/videos/{name}", "begin_frame_id": begin, "end_frame_id": end,
            "quality_prompt": quality, "fps": fps, "duration": round((end - begin) / fps, 2),
            "width": size[1], "height": size[0], "caption": caption}


def _image_line(name, caption, size):
    return {"image_path": f"{MEDIA}/images/{name}", "long_caption": caption,
            "long_caption_type": "caption-InternVL2.0", "text": "", "short_caption_type": "blip2_caption",
            "width": size[1], "height": size[0]}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    """``<root>/data/toy_data/{jsonls/000001/*.jsonl, media/{images,videos}}`` as the official layout."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("grn_repo")
    images, videos = root / MEDIA / "images", root / MEDIA / "videos"
    images.mkdir(parents=True)
    videos.mkdir(parents=True)
    digit = (load_digits().images[0] / 16 * 255).astype(np.uint8)
    Image.fromarray(digit).convert("RGB").resize((64, 64), Image.NEAREST).save(images / "000000.png")
    Image.fromarray(raw_photo("astronaut")).resize((96, 96)).save(images / "000001.jpg", quality=90)
    Image.fromarray(raw_photo("coffee")).resize((120, 80)).save(images / "000002.jpg", quality=90)
    frames, durations = raw_gif()
    frames = frames.repeat(4, axis=1).repeat(4, axis=2)
    frames = np.ascontiguousarray(frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2])
    fps = round(1000.0 / float(np.mean(durations)), 3)
    (videos / "000000.mp4").write_bytes(encode_mp4(frames, fps, gop=4))
    (videos / "000001.mp4").write_bytes(encode_mp4(np.ascontiguousarray(frames[::-1]), fps, gop=4))
    (videos / "000002.mp4").write_bytes(b"this is not an mp4 file " * 64)  # corrupt
    size = frames.shape[1:3]
    first = [_image_line("000000.png", DIGIT, (64, 64)),
             _video_line("000000.mp4", 0, len(frames), fps, size, EN, QUALITY[0]),
             "{not json",
             _image_line("000001.jpg", ASTRONAUT, (96, 96)),
             _video_line("000002.mp4", 0, 24, fps, size, EN, QUALITY[0]),          # corrupt video
             _video_line("000000.mp4", 0, 3, fps, size, EN, QUALITY[1])]           # 3 frames: no 5-frame clip fits
    second = [_video_line("000001.mp4", 4, 20, fps, size, ZH, QUALITY[1]),
              _image_line("000002.jpg", COFFEE, (80, 120)),
              _image_line("000009.jpg", COFFEE, (80, 120)),                          # missing image
              _video_line("000009.mp4", 0, 24, fps, size, ZH, QUALITY[1])]           # missing video
    folder = root / "data" / "toy_data" / "jsonls" / "000001"
    folder.mkdir(parents=True)
    for name, lines in (("0001_0800_000000006.jsonl", first), ("0002_0800_000000004.jsonl", second)):
        text = "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n"
        (folder / name).write_text(text, encoding="utf-8")
    return root


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_all(dm) -> list[dict]:
    batches = [dm.record(b) for b in dm.train_dataloader()]
    assert batches, "no batch"
    return batches


def _single_pass(dm, **changes):
    for key, value in {"resampled": False, "epoch_samples": None, "shuffle_buffer": 0, "num_workers": 0,
                       "batch_size": 1, "drop_last": False, **changes}.items():
        setattr(dm, key, value)
    return dm


def _expected_video_captions():
    out = set()
    for caption, quality in ((EN, QUALITY[0]), (ZH, QUALITY[1])):
        out |= {f"<T2V>{c['content']} {quality}" for c in caption}
    return out


def test_toy_jsonl_config_reads_the_official_layout_as_is(compose_cfg, toy_root):
    before = _snapshot(toy_root)
    cfg = compose_cfg("train", ["data=toy_jsonl", f"data.root={toy_root}", "data.video.pn=4", "data.video.fps=8",
                                "data.video.num_frames=5"])
    source = instantiate(cfg.data)
    assert isinstance(source, JointSource)
    image, video = source.parts["image"], source.parts["video"]
    assert isinstance(image, JsonlTextImageDataModule) and isinstance(video, JsonlTextVideoDataModule)

    images = _read_all(_single_pass(image))
    captions = [c for b in images for c in b["caption"]]
    assert sorted(captions) == sorted(f"<T2I>{c}" for c in (DIGIT, ASTRONAUT, COFFEE))
    # each image at its aspect-ratio bucket of pn (4 tokens of 16 px a side): the square ones 64², coffee (2:3)
    shapes = sorted(tuple(b["image"].shape[-2:]) for b in images)
    assert shapes == sorted([(64, 64), (64, 64), bucket_pixels(nearest_template(80 / 120), 4)])
    assert all(b["image"].abs().max() <= 1 for b in images)
    bad = image.bad_samples
    assert (bad["missing_media"], bad["wrong_type"]) == (1, 1) and sum(bad.values()) == 2, bad

    clips = _read_all(_single_pass(video))
    captions = [c for b in clips for c in b["caption"]]
    assert len(captions) == 2 and set(captions) <= _expected_video_captions()
    assert any(c.endswith(QUALITY[1]) and "卡通" in c for c in captions)  # the Chinese line, cut to frames 4..20
    assert all(tuple(b["video"].shape[:3]) == (1, 3, 5) for b in clips)
    bad = video.bad_samples
    # the corrupt mp4 and the 3-frame range (no 5-frame clip fits: the frame range is honoured), the missing mp4,
    # the line that is not JSON
    assert (bad["decode_video"], bad["missing_media"], bad["wrong_type"]) == (2, 1, 1), bad
    assert sum(bad.values()) == 4
    assert _snapshot(toy_root) == before


def test_caption_draws_over_epochs_cover_the_caption_list(toy_root):
    video = JsonlTextVideoDataModule(media_root=toy_root, train_shards=str(toy_root / "data/toy_data/jsonls/*/*"
                                                                                         ".jsonl"),
                                     pn=2, fps=8, num_frames=5, prompt_prefix=True, resampled=True,
                                     epoch_samples=24, batch_size=1, shuffle_buffer=4, shuffle_initial=2,
                                     quality_prompts="Folder prompt.")
    captions = {c for b in _read_all(video) for c in b["caption"]}
    # the per-source quality prompt replaces every line's own one
    assert all(c.startswith("<T2V>") and c.endswith(" Folder prompt.") for c in captions)
    assert len(captions) >= 4  # several of the six list entries (2 good lines x 3) were drawn


def test_make_shards_writes_the_toy_layout_into_text_shards(toy_root, tmp_path):
    before = _snapshot(toy_root)
    jsonls = sorted(str(p) for p in (toy_root / "data/toy_data/jsonls").rglob("*.jsonl"))
    result = load_script("make_shards").main(["jsonl", *jsonls, str(tmp_path / "video"), "--media-root",
                                              str(toy_root), "--kind", "video"])
    assert result["skipped"] == {"bad_json": 1, "other_kind": 4, "missing_media": 1}
    dm = _single_pass(TextVideoDataModule(train_shards=result["shards"], pn=4, fps=8, num_frames=5,
                                          prompt_prefix=True, resampled=False))
    captions = [c for b in _read_all(dm) for c in b["caption"]]
    assert len(captions) == 2 and set(captions) <= _expected_video_captions()
    assert dm.bad_samples["decode_video"] == 2
    image = load_script("make_shards").main(["jsonl", *jsonls, str(tmp_path / "image"), "--media-root",
                                             str(toy_root), "--kind", "image"])
    assert image["skipped"] == {"bad_json": 1, "other_kind": 5, "missing_media": 1}
    assert _snapshot(toy_root) == before


def test_the_toy_layout_trains_directly_and_through_shards(compose_cfg, toy_root, tmp_path):
    """``train.py task=t2v data=toy_jsonl data.root=<dir>`` (image and video lines in step) and, after
    ``scripts/make_shards.py jsonl``, ``data=text_video`` on its shards: both train (finite logged losses for
    every part), and the folder is left exactly as it was."""
    from grn.entrypoints.train import train_stage
    from shard_helpers import logged_values, tiny_tokenizer_ckpt

    before = _snapshot(toy_root)
    tok_ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt", config="tiny_joint")
    common = ["task=t2v", "model/generator=t2iv_tiny", "model/tokenizer=tiny_joint", "model/text_encoder=tiny",
              "trainer=cpu", "logger=csv", "callbacks=none", "trainer.log_every_n_steps=1",
              f"stages.t2v.tokenizer_ckpt={tok_ckpt}", "stages.t2v.max_steps=2",
              "stages.t2v.lit_module.lr_scheduler.warmup_steps=0"]
    direct = ["data=toy_jsonl", f"data.root={toy_root}", "data.video.pn=4", "data.video.fps=8",
              "data.video.num_frames=5", "data.image.stride=8", "data.video.stride=8"]
    for part in ("image", "video"):
        direct += [f"data.{part}.batch_size=1", f"data.{part}.num_workers=0", f"data.{part}.epoch_samples=4",
                   f"data.{part}.shuffle_buffer=2", f"data.{part}.shuffle_initial=1", f"data.{part}.pin_memory=false"]
    train_stage(compose_cfg("train", [*common, *direct, f"paths.run_dir={tmp_path / 'direct'}"]), "t2v")
    for name in ("train/loss_image", "train/loss_video"):
        values = logged_values(tmp_path / "direct", name)
        assert len(values) == 2 and all(np.isfinite(values)), (name, values)

    jsonls = sorted(str(p) for p in (toy_root / "data/toy_data/jsonls").rglob("*.jsonl"))
    shards = load_script("make_shards").main(["jsonl", *jsonls, str(tmp_path / "video"), "--media-root",
                                              str(toy_root), "--kind", "video"])["shards"]
    via = ["data=text_video", f"data.train_shards=[{','.join(repr(str(p)) for p in shards)}]", "data.pn=4", "data.stride=8", "data.num_frames=5",
           "data.fps=8", "data.batch_size=1", "data.num_workers=0", "data.epoch_samples=4", "data.shuffle_buffer=2",
           "data.pin_memory=false"]
    train_stage(compose_cfg("train", [*common, *via, f"paths.run_dir={tmp_path / 'shards'}"]), "t2v")
    values = logged_values(tmp_path / "shards", "train/loss")
    assert len(values) == 2 and all(np.isfinite(values)), values
    assert _snapshot(toy_root) == before
