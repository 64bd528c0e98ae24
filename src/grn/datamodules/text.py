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

import io
import json
import random
from typing import Any

import av
import numpy as np

from grn.datamodules.bad_samples import BadSample
from grn.datamodules.buckets import H_DIV_W_TEMPLATES, BucketBatcher, bucket_pixels, nearest_template
from grn.datamodules.images import decode_image, to_tensor
from grn.datamodules.video import check_num_frames, clip_from_sample, resize_cover_crop, sample_meta
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
                 with_fields: bool = False):
        self.pn, self.stride, self.short_caption_prob, self.templates = pn, stride, short_caption_prob, templates
        self.with_fields = with_fields

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        meta = sample_meta(sample)
        caption = image_caption(meta, rng, self.short_caption_prob)
        image = decode_image(sample)
        ratio = nearest_template(image.height / image.width, self.templates)
        size = bucket_pixels(ratio, self.pn, self.stride)
        pixels = resize_cover_crop(to_tensor(np.asarray(image))[None], size)[0]  # [3, H, W]
        out = {"image": pixels.clamp_(-1, 1), "caption": caption, "key": sample["__key__"], "bucket": ratio}
        if self.with_fields:
            out["caption_fields"] = caption_fields("image", meta)
        return out


class TextVideoDecoder:
    def __init__(self, pn: str | int, stride: int, num_frames: int, fps: float, templates: tuple[float, ...],
                 with_fields: bool = False):
        self.pn, self.stride, self.templates, self.with_fields = pn, stride, templates, with_fields
        self.num_frames, self.fps = check_num_frames(num_frames), float(fps)

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        meta = sample_meta(sample)
        caption = video_caption(meta, rng)
        if "height" in meta and "width" in meta:
            h_div_w = float(meta["height"]) / float(meta["width"])
        else:
            h_div_w = self._probe_ratio(sample)
        ratio = nearest_template(h_div_w, self.templates)
        size = bucket_pixels(ratio, self.pn, self.stride)
        video = clip_from_sample(sample, meta, self.num_frames, self.fps, size, rng, flip=False)
        out = {"video": video, "caption": caption, "key": sample["__key__"], "bucket": ratio}
        if self.with_fields:
            out["caption_fields"] = caption_fields("video", meta)
        return out

    @staticmethod
    def _probe_ratio(sample: dict[str, Any]) -> float:
        try:
            with av.open(io.BytesIO(sample["mp4"])) as c:
                s = c.streams.video[0]
                return s.height / s.width
        except KeyError:
            raise BadSample("missing_key", f"no mp4 among {sorted(sample)}") from None
        except (av.FFmpegError, IndexError, ZeroDivisionError) as err:
            raise BadSample("decode_video", f"{type(err).__name__}: {err}") from None


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
        return TextImageDecoder(self.pn, self.stride, self.short_caption_prob, self.templates, self.with_fields)


class TextVideoDataModule(_BucketedDataModule):
    """Text–video shards (from ``video_path`` jsonl lines with frame ranges), batched per bucket.

    Args:
        num_frames: ``1 + 4k`` frames per clip; fps: their rate (official 16).
        pn, stride, templates: as :class:`TextImageDataModule`.
        **kwargs: pipeline settings of :class:`~grn.datamodules.wds.ShardDataModule`.
    """

    kind = "video"

    def __init__(self, num_frames: int = 33, fps: float = 16.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_frames, self.fps = check_num_frames(num_frames), float(fps)

    def transform_spec(self) -> dict[str, Any]:
        return {**super().transform_spec(), "num_frames": self.num_frames, "fps": self.fps}

    def decoder(self, split: str) -> TextVideoDecoder:
        return TextVideoDecoder(self.pn, self.stride, self.num_frames, self.fps, self.templates, self.with_fields)

