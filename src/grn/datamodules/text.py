"""Text–image and text–video pairs from shards written from the official jsonl lines (facts §5.2).

A sample holds the media (``jpg``/``png``/``webp`` or ``mp4``) and the jsonl line as ``json``. Captions follow
the official rules: images use ``long_caption`` (``text`` when it is empty) and, with probability
``short_caption_prob``, the short ``text``; videos use ``tarsier2_caption`` (required), or
``MiniCPM_V_2_6_caption`` half of the time when present, with ``quality_prompt`` appended. Every example is
resized to cover, and centre-cropped to, its aspect-ratio bucket (:mod:`grn.datamodules.buckets`), and batches
never mix buckets.

Batches: ``{"image": float32 [B, 3, H, W] | "video": [B, 3, T, H, W] in [-1, 1], "caption": list[str], "key"}``.
"""

from __future__ import annotations

import io
import random
from typing import Any

import av
import numpy as np

from grn.datamodules.bad_samples import BadSample
from grn.datamodules.buckets import H_DIV_W_TEMPLATES, BucketBatcher, bucket_pixels, nearest_template
from grn.datamodules.images import decode_image, to_tensor
from grn.datamodules.video import check_num_frames, clip_from_sample, resize_cover_crop, sample_meta
from grn.datamodules.wds import Batcher, ShardDataModule

__all__ = ["TextImageDataModule", "TextVideoDataModule", "image_caption", "video_caption"]


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


class TextImageDecoder:
    def __init__(self, pn: str | int, stride: int, short_caption_prob: float, templates: tuple[float, ...]):
        self.pn, self.stride, self.short_caption_prob, self.templates = pn, stride, short_caption_prob, templates

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        meta = sample_meta(sample)
        caption = image_caption(meta, rng, self.short_caption_prob)
        image = decode_image(sample)
        ratio = nearest_template(image.height / image.width, self.templates)
        size = bucket_pixels(ratio, self.pn, self.stride)
        pixels = resize_cover_crop(to_tensor(np.asarray(image))[None], size)[0]  # [3, H, W]
        return {"image": pixels.clamp_(-1, 1), "caption": caption, "key": sample["__key__"], "bucket": ratio}


class TextVideoDecoder:
    def __init__(self, pn: str | int, stride: int, num_frames: int, fps: float, templates: tuple[float, ...]):
        self.pn, self.stride, self.templates = pn, stride, templates
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
        return {"video": video, "caption": caption, "key": sample["__key__"], "bucket": ratio}

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

    def batcher(self, split: str) -> Batcher:
        return BucketBatcher(self.batch_size, drop_last=self.drop_last if split == "train" else False)


class TextImageDataModule(_BucketedDataModule):
    """Text–image shards (from ``image_path`` jsonl lines), batched per aspect-ratio bucket.

    Args:
        pn: size preset (``"0.06M"`` = 256², ``"1M"`` = 1024², …) or a side in tokens.
        stride: pixels per token (16 for the official tokenizer).
        templates: h/w templates (default: the official 15).
        short_caption_prob: chance of the short caption (official 0.2).
        **kwargs: pipeline settings of :class:`~grn.datamodules.wds.ShardDataModule`.
    """

    def __init__(self, short_caption_prob: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.short_caption_prob = float(short_caption_prob)

    def decoder(self, split: str) -> TextImageDecoder:
        return TextImageDecoder(self.pn, self.stride, self.short_caption_prob, self.templates)


class TextVideoDataModule(_BucketedDataModule):
    """Text–video shards (from ``video_path`` jsonl lines with frame ranges), batched per bucket.

    Args:
        num_frames: ``1 + 4k`` frames per clip; fps: their rate (official 16).
        pn, stride, templates: as :class:`TextImageDataModule`.
        **kwargs: pipeline settings of :class:`~grn.datamodules.wds.ShardDataModule`.
    """

    def __init__(self, num_frames: int = 33, fps: float = 16.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_frames, self.fps = check_num_frames(num_frames), float(fps)

    def decoder(self, split: str) -> TextVideoDecoder:
        return TextVideoDecoder(self.pn, self.stride, self.num_frames, self.fps, self.templates)

