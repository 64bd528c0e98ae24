"""Text–image and text–video pairs from shards written from the official jsonl lines (facts §5.2).

A sample holds the media (``jpg``/``png``/``webp`` or ``mp4``) and the jsonl line as ``json``. Captions follow
the official rules: images use ``long_caption`` (``text`` when it is empty) and, with probability
``short_caption_prob``, the short ``text``; videos use ``tarsier2_caption`` (required), or
``MiniCPM_V_2_6_caption`` half of the time when present, with ``quality_prompt`` appended. Every example is
resized to cover, and centre-cropped to, its aspect-ratio bucket (:mod:`grn.datamodules.buckets`), and batches
never mix buckets.

Batches: ``{"image": float32 [B, 3, H, W] | "video": [B, 3, T, H, W] in [-1, 1], "caption": list[str], "key"}``.
A :meth:`~_BucketedDataModule.single_pass` view (what the text token cache reads) also returns
``"caption_fields"``: the caption-relevant jsonl fields as a JSON string, so that every caption a sample can get
is cached (:mod:`grn.datamodules.text_tokens`) and the choice is made again at every read.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np

from grn.datamodules.bad_samples import BadSample, Limits
from grn.datamodules.buckets import H_DIV_W_TEMPLATES, BucketBatcher, bucket_pixels, nearest_template
from grn.datamodules.images import decode_image, to_tensor
from grn.datamodules.video import (
    check_num_frames,
    clip_from_sample,
    frame_range,
    meta_number,
    probe_video,
    resize_cover_crop,
    sample_meta,
)
from grn.datamodules.wds import Batcher, ShardDataModule

__all__ = ["TextImageDataModule", "TextVideoDataModule", "caption_candidates", "image_caption", "video_caption"]

# the jsonl fields the caption rules read
CAPTION_FIELDS = {"image": ("long_caption", "text"),
                  "video": ("tarsier2_caption", "MiniCPM_V_2_6_caption", "quality_prompt")}


def _text(meta: dict, key: str) -> str:
    value = meta.get(key, "")
    if not isinstance(value, str):
        raise BadSample("wrong_type", f"{key} is a {type(value).__name__}, not a string")
    return value.strip()


def image_caption(meta: dict[str, Any], rng: random.Random, short_caption_prob: float = 0.2) -> str:
    long, short = _text(meta, "long_caption"), _text(meta, "text")
    if short and (not long or rng.random() < short_caption_prob):
        return short
    if not long:
        raise BadSample("missing_key", "neither long_caption nor text")
    return long


def video_caption(meta: dict[str, Any], rng: random.Random) -> str:
    caption = _text(meta, "tarsier2_caption")
    if not caption:
        raise BadSample("missing_key", "no tarsier2_caption")
    alt = _text(meta, "MiniCPM_V_2_6_caption")
    if alt and rng.random() < 0.5:
        caption = alt
    quality = _text(meta, "quality_prompt")
    return f"{caption} {quality}" if quality else caption


def caption_candidates(kind: str, meta: dict[str, Any]) -> list[str]:
    """Every caption :func:`image_caption` (``kind="image"``) or :func:`video_caption` (``"video"``) can return
    for ``meta``, without duplicates, in a fixed order. Raises ``BadSample`` where the rules find no caption."""
    if kind == "image":
        long, short = _text(meta, "long_caption"), _text(meta, "text")
        found = [c for c in (long, short) if c]
        if not found:
            raise BadSample("missing_key", "neither long_caption nor text")
    elif kind == "video":
        quality = _text(meta, "quality_prompt")
        main = _text(meta, "tarsier2_caption")
        if not main:
            raise BadSample("missing_key", "no tarsier2_caption")
        found = [f"{c} {quality}" if quality else c for c in (main, _text(meta, "MiniCPM_V_2_6_caption")) if c]
    else:
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    return list(dict.fromkeys(found))


def caption_fields(kind: str, meta: dict[str, Any]) -> str:
    """The caption-relevant fields of a jsonl line as a JSON string (a batch keeps strings as lists)."""
    return json.dumps({k: meta[k] for k in CAPTION_FIELDS[kind] if k in meta}, sort_keys=True)


class TextImageDecoder:
    def __init__(self, pn: str | int, stride: int, short_caption_prob: float, templates: tuple[float, ...],
                 with_fields: bool = False, limits: Limits = Limits()):
        self.pn, self.stride, self.short_caption_prob, self.templates = pn, stride, short_caption_prob, templates
        self.with_fields, self.limits = with_fields, limits

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        meta = sample_meta(sample)
        caption = image_caption(meta, rng, self.short_caption_prob)
        image = decode_image(sample, self.limits)
        ratio = nearest_template(image.height / image.width, self.templates)
        size = bucket_pixels(ratio, self.pn, self.stride)
        pixels = resize_cover_crop(to_tensor(np.asarray(image))[None], size)[0]  # [3, H, W]
        out = {"image": pixels.clamp_(-1, 1), "caption": caption, "key": sample["__key__"], "bucket": ratio}
        if self.with_fields:
            out["caption_fields"] = caption_fields("image", meta)
        return out


def clip_frames(seconds: float, fps: float, max_frames: int, min_duration: float = 1.0,
                resolution: float = 1.0) -> int:
    """Frames of a clip trained at its own duration (facts §5.2): the duration rounded to ``resolution`` seconds,
    below ``min_duration`` rejected (``BadSample("too_short")``), then ``int(duration · fps + 1)`` frames, clamped
    to ``max_frames`` and rounded down to ``1 + 4k`` (the tokenizer's temporal stride)."""
    mapped = round(seconds / resolution) * resolution
    if mapped < min_duration:
        raise BadSample("too_short", f"{seconds:.2f} s is under the minimum of {min_duration} s")
    frames = min(int(mapped * fps + 1), int(max_frames))
    return 1 + 4 * ((frames - 1) // 4)


class TextVideoDecoder:
    def __init__(self, pn: str | int, stride: int, num_frames: int, fps: float, templates: tuple[float, ...],
                 with_fields: bool = False, durations: str = "fixed", min_duration: float = 1.0,
                 duration_resolution: float = 1.0, limits: Limits = Limits()):
        self.pn, self.stride, self.templates, self.with_fields = pn, stride, templates, with_fields
        self.num_frames, self.fps = check_num_frames(num_frames), float(fps)
        self.durations, self.min_duration, self.duration_resolution = durations, min_duration, duration_resolution
        self.limits = limits

    def _frames(self, sample: dict[str, Any], meta: dict[str, Any]) -> tuple[int, float]:
        """``(frames, frame rate)`` of this sample's clip. Per-clip durations round to whole seconds, which can be
        longer than the video (1.6 s -> 2 s): the clip then spans the whole video at a slightly higher rate, as the
        official loader stretches its frame indices over the range it has."""
        if self.durations == "fixed":
            return self.num_frames, self.fps
        if "begin_frame_id" in meta and "end_frame_id" in meta and meta.get("fps"):
            begin, end, src_fps = frame_range(meta)
            seconds = end - begin
        else:
            info = probe_video(_mp4(sample))
            seconds, src_fps = info["duration"], info["fps"]
        frames = clip_frames(seconds, self.fps, self.num_frames, self.min_duration, self.duration_resolution)
        last = seconds - 1.0 / src_fps  # time of the last source frame after the first
        rate = self.fps if (frames - 1) / self.fps <= last else (frames - 1) / max(last, 1e-6)
        return frames, rate

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        meta = sample_meta(sample)
        caption = video_caption(meta, rng)
        if "height" in meta and "width" in meta:
            h_div_w = meta_number(meta, "height", positive=True) / meta_number(meta, "width", positive=True)
            if not 0 < h_div_w < float("inf"):
                raise BadSample("bad_value", f"json height/width = {h_div_w}")
        else:
            info = probe_video(_mp4(sample), self.limits)
            h_div_w = info["height"] / info["width"]
        ratio = nearest_template(h_div_w, self.templates)
        size = bucket_pixels(ratio, self.pn, self.stride)
        frames, rate = self._frames(sample, meta)
        video = clip_from_sample(sample, meta, frames, rate, size, rng, flip=False, limits=self.limits)
        # a batch holds one shape: the bucket is the aspect ratio and, with per-clip durations, the frame count
        bucket = ratio if self.durations == "fixed" else (ratio, frames)
        out = {"video": video, "caption": caption, "key": sample["__key__"], "bucket": bucket}
        if self.with_fields:
            out["caption_fields"] = caption_fields("video", meta)
        return out


def _mp4(sample: dict[str, Any]) -> Any:
    if "mp4" not in sample:
        raise BadSample("missing_key", f"no mp4 among {sorted(sample)}")
    return sample["mp4"]


class _BucketedDataModule(ShardDataModule):
    def __init__(self, pn: str | int = "0.06M", stride: int = 16, templates: list[float] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pn, self.stride = pn, int(stride)
        self.templates = tuple(templates) if templates else H_DIV_W_TEMPLATES
        self.with_fields = False  # set on single_pass views: batches also carry "caption_fields"

    kind: str  # "image" | "video": which caption rules apply

    def batcher(self, split: str) -> Batcher:
        return BucketBatcher(self.batch_size, drop_last=self.drop_last if split == "train" else False)

    def transform_spec(self) -> dict[str, Any]:
        return {**super().transform_spec(), "pn": self.pn, "stride": self.stride, "templates": list(self.templates)}

    def single_pass(self, split: str = "train", batch_size: int | None = None) -> _BucketedDataModule:
        view = super().single_pass(split, batch_size)
        view.with_fields = True
        return view


class TextImageDataModule(_BucketedDataModule):
    """Text–image shards (from ``image_path`` jsonl lines), batched per aspect-ratio bucket.

    Args:
        pn: size preset (``"0.06M"`` = 256², ``"1M"`` = 1024², …) or a side in tokens.
        stride: pixels per token (16 for the official tokenizer).
        templates: h/w templates (default: the official 15).
        short_caption_prob: chance of the short caption (official 0.2).
        **kwargs: pipeline settings of :class:`~grn.datamodules.wds.ShardDataModule`.
    """

    kind = "image"

    def __init__(self, short_caption_prob: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.short_caption_prob = float(short_caption_prob)

    def decoder(self, split: str) -> TextImageDecoder:
        return TextImageDecoder(self.pn, self.stride, self.short_caption_prob, self.templates, self.with_fields,
                                self.limits)


class TextVideoDataModule(_BucketedDataModule):
    """Text–video shards (from ``video_path`` jsonl lines with frame ranges), batched per bucket.

    Args:
        num_frames: ``1 + 4k`` frames per clip (``durations="per_clip"``: the most a clip gets); fps: their rate
            (official 16).
        durations: ``"fixed"`` (every clip ``num_frames``) or ``"per_clip"`` (the official recipe: each clip is
            trained at its own duration, rounded to ``duration_resolution`` seconds, at least ``min_duration``
            — shorter videos are skipped and counted as ``too_short`` — giving ``int(d · fps + 1)`` frames up to
            ``num_frames``; batches then hold one aspect ratio *and* one frame count).
        pn, stride, templates: as :class:`TextImageDataModule`.
        **kwargs: pipeline settings of :class:`~grn.datamodules.wds.ShardDataModule`.
    """

    kind = "video"

    def __init__(self, num_frames: int = 33, fps: float = 16.0, durations: str = "fixed", min_duration: float = 1.0,
                 duration_resolution: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_frames, self.fps = check_num_frames(num_frames), float(fps)
        if durations not in ("fixed", "per_clip"):
            raise ValueError(f"durations must be 'fixed' or 'per_clip', got {durations!r}")
        self.durations, self.min_duration = durations, float(min_duration)
        self.duration_resolution = float(duration_resolution)

    def transform_spec(self) -> dict[str, Any]:
        spec = {**super().transform_spec(), "num_frames": self.num_frames, "fps": self.fps}
        if self.durations != "fixed":
            spec.update(durations=self.durations, min_duration=self.min_duration,
                        duration_resolution=self.duration_resolution)
        return spec

    def decoder(self, split: str) -> TextVideoDecoder:
        return TextVideoDecoder(self.pn, self.stride, self.num_frames, self.fps, self.templates, self.with_fields,
                                self.durations, self.min_duration, self.duration_resolution, self.limits)

