"""Text–image and text–video pairs from shards written from the official jsonl lines (facts §5.2,
official_update §C10), or read from the jsonl files directly (:mod:`grn.datamodules.jsonl`).

A sample holds the media (``jpg``/``png``/``webp`` or ``mp4``) and the jsonl line as ``json``. Captions follow
the official rules (:mod:`grn.datamodules.captions`): images use ``long_caption`` (``text`` when it is empty)
and, with probability ``short_caption_prob``, the short ``text`` (or sentence dropping for InternVL captions);
videos draw one entry of the ``caption`` list uniformly (new schema) or use ``tarsier2_caption`` /
``MiniCPM_V_2_6_caption`` half of the time (old schema), optionally drop sentences, and get ``quality_prompt``
appended (a per-source ``quality_prompts`` entry replaces it). With ``prompt_prefix`` the caption starts with
``<T2I>`` / ``<T2V>`` / ``<I2V>`` (:mod:`grn.prompts`). Every example is resized to cover, and centre-cropped
to, its aspect-ratio bucket (:mod:`grn.datamodules.buckets`) at ``pn`` or at a preset drawn per example from
``pn_list`` / ``pn_probs``, and batches never mix buckets.

Batches: ``{"image": float32 [B, 3, H, W] | "video": [B, 3, T, H, W] in [-1, 1], "caption": list[str], "key"}``.
A :meth:`~_BucketedDataModule.single_pass` view (what the text token cache reads) also returns
``"caption_fields"``: the caption-relevant jsonl fields as a JSON string, so that every caption a sample can get
is cached (:mod:`grn.datamodules.text_tokens`) and the choice is made again at every read.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from grn.datamodules.bad_samples import BadSample, Limits
from grn.datamodules.buckets import H_DIV_W_TEMPLATES, BucketBatcher, PnChoice, bucket_pixels, nearest_template
from grn.datamodules.captions import CaptionRules, caption_fields, with_quality
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
from grn.datamodules.wds import Batcher, ShardDataModule, source_urls

__all__ = ["TextImageDataModule", "TextVideoDataModule", "caption_candidates", "image_caption", "video_caption"]


def image_caption(meta: dict[str, Any], rng: random.Random, short_caption_prob: float = 0.2,
                  prompt_prefix: bool = False) -> str:
    """The caption of an image line (:meth:`~grn.datamodules.captions.CaptionRules.image`)."""
    return CaptionRules(short_caption_prob, prompt_prefix).image(meta, rng)


def video_caption(meta: dict[str, Any], rng: random.Random, short_caption_prob: float = 0.0,
                  prompt_prefix: bool = False) -> str:
    """The caption of a video line (:meth:`~grn.datamodules.captions.CaptionRules.video`)."""
    return CaptionRules(short_caption_prob, prompt_prefix).video(meta, rng)


def caption_candidates(kind: str, meta: dict[str, Any], rules: CaptionRules | None = None) -> list[str]:
    """Every caption ``rules`` (default: those of :func:`image_caption` / :func:`video_caption`) can give ``meta``
    of ``kind``, without duplicates, in a fixed order. Raises ``BadSample`` where the rules find no caption."""
    if rules is None:
        rules = CaptionRules(0.2 if kind == "image" else 0.0)
    return rules.candidates(kind, meta)


def _source_of(sample: dict[str, Any], quality_by_url: dict[str, str] | None, meta: dict[str, Any]) -> dict:
    """``meta`` with the quality prompt of the sample's source, where one is set."""
    if not quality_by_url:
        return meta
    return with_quality(meta, quality_by_url.get(sample.get("__url__")))


class TextImageDecoder:
    """Raw text–image sample → ``{"image": float32 [3, H, W] in [-1, 1], "caption", "key", "bucket"}``; the bucket
    is the template ratio (with ``pn_choice``: ``(ratio, pn)``). ``quality_by_url`` is unused for images (the
    official rules append no quality prompt to them)."""

    def __init__(self, pn: str | int, stride: int, short_caption_prob: float, templates: tuple[float, ...],
                 with_fields: bool = False, limits: Limits = Limits(), *, prompt_prefix: bool = False,
                 pn_choice: PnChoice | None = None, quality_by_url: dict[str, str] | None = None):
        self.pn, self.stride, self.short_caption_prob, self.templates = pn, stride, short_caption_prob, templates
        self.with_fields, self.limits = with_fields, limits
        self.rules = CaptionRules(short_caption_prob, prompt_prefix)
        self.pn_choice = pn_choice

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        meta = sample_meta(sample)
        caption = self.rules.image(meta, rng)
        image = decode_image(sample, self.limits)
        ratio = nearest_template(image.height / image.width, self.templates)
        pn = self.pn_choice.draw(rng, image.height, image.width) if self.pn_choice else self.pn
        size = bucket_pixels(ratio, pn, self.stride)
        pixels = resize_cover_crop(to_tensor(np.asarray(image))[None], size)[0]  # [3, H, W]
        bucket = (ratio, pn) if self.pn_choice else ratio
        out = {"image": pixels.clamp_(-1, 1), "caption": caption, "key": sample["__key__"], "bucket": bucket}
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
    """Raw text–video sample → ``{"video": float32 [3, T, H, W] in [-1, 1], "caption", "key", "bucket"}``; the
    bucket is the template ratio (per-clip durations: ``(ratio, T)``; with ``pn_choice``: ``(that, pn)``).
    ``quality_by_url`` maps a source url to the quality prompt that replaces its lines' own one."""

    def __init__(self, pn: str | int, stride: int, num_frames: int, fps: float, templates: tuple[float, ...],
                 with_fields: bool = False, durations: str = "fixed", min_duration: float = 1.0,
                 duration_resolution: float = 1.0, limits: Limits = Limits(), *, short_caption_prob: float = 0.0,
                 prompt_prefix: bool = False, pn_choice: PnChoice | None = None,
                 quality_by_url: dict[str, str] | None = None):
        self.pn, self.stride, self.templates, self.with_fields = pn, stride, templates, with_fields
        self.num_frames, self.fps = check_num_frames(num_frames), float(fps)
        self.durations, self.min_duration, self.duration_resolution = durations, min_duration, duration_resolution
        self.limits = limits
        self.rules = CaptionRules(short_caption_prob, prompt_prefix)
        self.pn_choice, self.quality_by_url = pn_choice, quality_by_url

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
        meta = _source_of(sample, self.quality_by_url, sample_meta(sample))
        caption = self.rules.video(meta, rng)
        if "height" in meta and "width" in meta:
            height, width = meta_number(meta, "height", positive=True), meta_number(meta, "width", positive=True)
            h_div_w = height / width
            if not 0 < h_div_w < float("inf"):
                raise BadSample("bad_value", f"json height/width = {h_div_w}")
        else:
            info = probe_video(_mp4(sample), self.limits)
            height, width = info["height"], info["width"]
            h_div_w = height / width
        ratio = nearest_template(h_div_w, self.templates)
        pn = self.pn_choice.draw(rng, height, width) if self.pn_choice else self.pn
        size = bucket_pixels(ratio, pn, self.stride)
        frames, rate = self._frames(sample, meta)
        video = clip_from_sample(sample, meta, frames, rate, size, rng, flip=False, limits=self.limits)
        # a batch holds one shape: the bucket is the aspect ratio and, with per-clip durations, the frame count
        bucket = ratio if self.durations == "fixed" else (ratio, frames)
        bucket = (bucket, pn) if self.pn_choice else bucket
        out = {"video": video, "caption": caption, "key": sample["__key__"], "bucket": bucket}
        if self.with_fields:
            out["caption_fields"] = caption_fields("video", meta)
        return out


def _mp4(sample: dict[str, Any]) -> Any:
    if "mp4" not in sample:
        raise BadSample("missing_key", f"no mp4 among {sorted(sample)}")
    return sample["mp4"]


class _BucketedDataModule(ShardDataModule):
    def __init__(self, pn: str | int = "0.06M", stride: int = 16, templates: list[float] | None = None,
                 prompt_prefix: bool = False, pn_list: list[str | int] | None = None,
                 pn_probs: list[float] | None = None, quality_prompts: str | list[str | None] | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.pn, self.stride = pn, int(stride)
        self.templates = tuple(templates) if templates else H_DIV_W_TEMPLATES
        self.with_fields = False  # set on single_pass views: batches also carry "caption_fields"
        self.prompt_prefix = bool(prompt_prefix)
        self.pn_choice = PnChoice(list(pn_list), pn_probs, self.stride) if pn_list else None
        if isinstance(quality_prompts, str) or quality_prompts is None:
            self.quality_prompts = quality_prompts or None
        else:
            self.quality_prompts = [q or None for q in quality_prompts]
            if len(self.quality_prompts) != len(source_urls(self.train_shards)):
                raise ValueError(f"{len(self.quality_prompts)} quality_prompts for "
                                 f"{len(source_urls(self.train_shards))} sources of train_shards; give one per "
                                 "source (null or '' keeps a source's own quality_prompt)")

    kind: str  # "image" | "video": which caption rules apply
    short_caption_prob: float

    @property
    def caption_rules(self) -> CaptionRules:
        return CaptionRules(self.short_caption_prob, self.prompt_prefix)

    def quality_by_url(self, split: str) -> dict[str, str] | None:
        """Source url → the quality prompt that replaces its lines' own one (official
        ``meta_folder_identifiers``): one string for every source, or one per source of ``train_shards`` (and of
        ``val_shards`` where it has as many sources)."""
        if self.quality_prompts is None:
            return None
        shards = self.train_shards if split == "train" else self.val_shards
        sources = source_urls(shards)
        prompts = ([self.quality_prompts] * len(sources) if isinstance(self.quality_prompts, str)
                   else self.quality_prompts)
        if len(prompts) != len(sources):
            return None
        return {url: q for urls, q in zip(sources, prompts) if q for url in urls}

    def batcher(self, split: str) -> Batcher:
        return BucketBatcher(self.batch_size, drop_last=self.drop_last if split == "train" else False)

    def transform_spec(self) -> dict[str, Any]:
        spec = {**super().transform_spec(), "pn": self.pn, "stride": self.stride, "templates": list(self.templates)}
        # only settings away from the old defaults enter the spec, so existing token caches keep their keys
        if self.prompt_prefix:
            spec["prompt_prefix"] = True
        if self.pn_choice is not None:
            spec.update(self.pn_choice.spec())
        if self.quality_prompts is not None:
            spec["quality_prompts"] = self.quality_prompts
        return spec

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
        short_caption_prob: chance of the short caption, or of sentence dropping for an InternVL long caption
            without one (official 0.2).
        prompt_prefix: ``"<T2I>"`` in front of every caption (the FSA checkpoints were trained so; off for the
            older ones).
        pn_list, pn_probs: per-example size presets and their weights (official ``sample_pn``); ``pn`` when unset.
        quality_prompts: unused for images (kept for one signature with video).
        **kwargs: pipeline settings of :class:`~grn.datamodules.wds.ShardDataModule`.
    """

    kind = "image"

    def __init__(self, short_caption_prob: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.short_caption_prob = float(short_caption_prob)

    def decoder(self, split: str) -> TextImageDecoder:
        return TextImageDecoder(self.pn, self.stride, self.short_caption_prob, self.templates, self.with_fields,
                                self.limits, prompt_prefix=self.prompt_prefix, pn_choice=self.pn_choice)


class TextVideoDataModule(_BucketedDataModule):
    """Text–video shards (from ``video_path`` jsonl lines with frame ranges), batched per bucket.

    Args:
        num_frames: ``1 + 4k`` frames per clip (``durations="per_clip"``: the most a clip gets); fps: their rate
            (official 16).
        durations: ``"fixed"`` (every clip ``num_frames``) or ``"per_clip"`` (the official recipe: each clip is
            trained at its own duration, rounded to ``duration_resolution`` seconds, at least ``min_duration``
            — shorter videos are skipped and counted as ``too_short`` — giving ``int(d · fps + 1)`` frames up to
            ``num_frames``; batches then hold one aspect ratio *and* one frame count).
        short_caption_prob: chance of sentence dropping (official ``short_cap_prob`` with
            ``enable_dynamic_length_prompt``; 0 in the released script).
        pn, stride, templates, prompt_prefix (``"<T2V>"``, or ``"<I2V>"`` for lines with
            ``first_frame_condition: true``), pn_list, pn_probs: as :class:`TextImageDataModule`.
        quality_prompts: a quality prompt for every source, or one per source of ``train_shards`` (null or '':
            the lines' own), replacing the lines' ``quality_prompt`` (official ``meta_folder_identifiers``).
        **kwargs: pipeline settings of :class:`~grn.datamodules.wds.ShardDataModule`.
    """

    kind = "video"

    def __init__(self, num_frames: int = 33, fps: float = 16.0, durations: str = "fixed", min_duration: float = 1.0,
                 duration_resolution: float = 1.0, short_caption_prob: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.short_caption_prob = float(short_caption_prob)
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
        if self.short_caption_prob:
            spec["short_caption_prob"] = self.short_caption_prob
        return spec

    def decoder(self, split: str) -> TextVideoDecoder:
        return TextVideoDecoder(self.pn, self.stride, self.num_frames, self.fps, self.templates, self.with_fields,
                                self.durations, self.min_duration, self.duration_resolution, self.limits,
                                short_caption_prob=self.short_caption_prob, prompt_prefix=self.prompt_prefix,
                                pn_choice=self.pn_choice, quality_by_url=self.quality_by_url(split))

