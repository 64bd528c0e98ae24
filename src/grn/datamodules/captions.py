"""Caption rules of the official T2I/T2V data (reference/official_update.md §C10, §A6): which caption a jsonl line
gives, drawn with the sample's seeded ``random.Random`` (:func:`grn.datamodules.wds.sample_rng`, a pure function
of seed, epoch, rank, worker and sample index), and every caption it *can* give (what a text token cache encodes).

Video lines, in order:

1. the base caption: with the new schema (no ``tarsier2_caption``), one entry of ``caption`` — a list of
   ``{"type": "short" | "medium" | "long", "content": str}`` — drawn uniformly (1/3 each when all three exist);
   with the old schema ``tarsier2_caption``, or ``MiniCPM_V_2_6_caption`` half of the time when present;
2. with probability ``short_caption_prob`` (default 0 for video), sentence dropping (:func:`drop_sentences`);
3. ``quality_prompt`` appended after a space (a per-source prompt, when set, replaces the line's own one:
   :func:`with_quality`);
4. with ``prompt_prefix``, ``"<T2V>"`` (``"<I2V>"`` where the line has ``first_frame_condition: true``) in front,
   no space (:mod:`grn.prompts`).

Image lines: ``long_caption`` (``text`` when the long caption is empty); with probability ``short_caption_prob``
(default 0.2) ``text`` when it is non-empty, else sentence dropping where ``'InternVL' in long_caption_type``; then
``"<T2I>"`` with ``prompt_prefix``. No draw is made where there is nothing to choose, so lines of the old schema
get the same captions from the same seed as before these rules existed.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

from grn.datamodules.bad_samples import BadSample
from grn.prompts import video_task, with_prefix

__all__ = ["CAPTION_FIELDS", "CaptionRules", "caption_fields", "drop_sentences", "sentence_prefixes", "with_quality"]

# the jsonl fields the caption rules read
CAPTION_FIELDS = {"image": ("long_caption", "text", "long_caption_type"),
                  "video": ("caption", "tarsier2_caption", "MiniCPM_V_2_6_caption", "quality_prompt",
                            "first_frame_condition")}


def _text(meta: dict, key: str) -> str:
    value = meta.get(key, "")
    if not isinstance(value, str):
        raise BadSample("wrong_type", f"{key} is a {type(value).__name__}, not a string")
    return value.strip()


def _sentences(caption: str) -> list[str]:
    return [s for s in caption.split(".") if s.strip()]


def sentence_prefixes(caption: str, min_sentences: int = 2) -> list[str]:
    """Every caption :func:`drop_sentences` can return, shortest first: the first k sentences (split on ``'.'``)
    rejoined with ``'.'`` and ending in ``'.'``, for k in ``[min_sentences, n]``; ``[caption]`` where it has fewer
    than ``min_sentences`` sentences (a Chinese caption with ``'。'`` rarely splits)."""
    parts = _sentences(caption)
    if len(parts) < min_sentences:
        return [caption]
    return [".".join(parts[:k]) + "." for k in range(min_sentences, len(parts) + 1)]


def drop_sentences(caption: str, rng: random.Random, min_sentences: int = 2) -> str:
    """Keep the first k sentences of ``caption``, k uniform in ``[min_sentences, n]`` (official
    ``random_drop_sentences(caption, 2)``); unchanged, and no draw, where it has fewer than ``min_sentences``."""
    options = sentence_prefixes(caption, min_sentences)
    return options[0] if len(options) == 1 else options[rng.randrange(len(options))]


def with_quality(meta: dict[str, Any], quality_prompt: str | None) -> dict[str, Any]:
    """``meta`` with its ``quality_prompt`` replaced by a non-empty per-source one (official
    ``meta_folder_identifiers``); ``meta`` itself where there is none. The line is copied, never changed."""
    return {**meta, "quality_prompt": quality_prompt} if quality_prompt else meta


def _caption_list(meta: dict[str, Any]) -> list[str]:
    """The contents of a new-schema ``caption`` list (empty ones left out)."""
    value = meta["caption"]
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if not isinstance(value, list):
        raise BadSample("wrong_type", f"caption is a {type(value).__name__}, not a list of {{type, content}}")
    out = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("content", ""), str):
            raise BadSample("wrong_type", "caption entries must be {\"type\": str, \"content\": str}")
        content = entry.get("content", "").strip()
        if content:
            out.append(content)
    return out


def _video_bases(meta: dict[str, Any]) -> tuple[list[str], str]:
    """(base captions, rule): rule ``"uniform"`` (new schema) or ``"tarsier2"`` (old: [tarsier2, MiniCPM?])."""
    main = _text(meta, "tarsier2_caption")
    if not main and "tarsier2_caption" not in meta and "caption" in meta:
        bases = _caption_list(meta)
        if not bases:
            raise BadSample("missing_key", "caption holds no non-empty content")
        return bases, "uniform"
    if not main:
        raise BadSample("missing_key", "no caption list and no tarsier2_caption")
    alt = _text(meta, "MiniCPM_V_2_6_caption")
    return ([main, alt] if alt else [main]), "tarsier2"


@dataclasses.dataclass(frozen=True)
class CaptionRules:
    """The caption settings of a text data source.

    Attributes:
        short_caption_prob: images: chance of the short ``text`` (or of sentence dropping for InternVL long
            captions); videos: chance of sentence dropping (official ``short_cap_prob``, default 0.2 for images,
            0 for videos as in the released script).
        prompt_prefix: put ``<T2I>`` / ``<T2V>`` / ``<I2V>`` in front (the FSA checkpoints were trained so).
    """

    short_caption_prob: float = 0.0
    prompt_prefix: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.short_caption_prob) <= 1.0:
            raise ValueError(f"short_caption_prob must be in [0, 1], got {self.short_caption_prob}")

    def spec(self) -> dict[str, Any]:
        """The settings as plain values (a token cache's key and record)."""
        return {"short_caption_prob": float(self.short_caption_prob), "prompt_prefix": bool(self.prompt_prefix)}

    # ------------------------------------------------------------------------------------------------ images
    def image(self, meta: dict[str, Any], rng: random.Random) -> str:
        long, short = _text(meta, "long_caption"), _text(meta, "text")
        if not long and not short:
            raise BadSample("missing_key", "neither long_caption nor text")
        caption = long or short
        if long and short:
            if rng.random() < self.short_caption_prob:
                caption = short
        elif long and self._droppable(meta) and self.short_caption_prob > 0:
            if rng.random() < self.short_caption_prob:
                caption = drop_sentences(long, rng)
        return self._prefix(caption, "t2i")

    def image_candidates(self, meta: dict[str, Any]) -> list[str]:
        long, short = _text(meta, "long_caption"), _text(meta, "text")
        found = [c for c in (long, short) if c]
        if not found:
            raise BadSample("missing_key", "neither long_caption nor text")
        if long and not short and self._droppable(meta) and self.short_caption_prob > 0:
            found += sentence_prefixes(long)
        return list(dict.fromkeys(self._prefix(c, "t2i") for c in found))

    @staticmethod
    def _droppable(meta: dict[str, Any]) -> bool:
        return "InternVL" in _text(meta, "long_caption_type")

    # ------------------------------------------------------------------------------------------------ videos
    def video(self, meta: dict[str, Any], rng: random.Random) -> str:
        bases, rule = _video_bases(meta)
        if rule == "uniform":
            caption = bases[0] if len(bases) == 1 else bases[rng.randrange(len(bases))]
        else:
            caption = bases[1] if len(bases) == 2 and rng.random() < 0.5 else bases[0]
        if self.short_caption_prob > 0 and rng.random() < self.short_caption_prob:
            caption = drop_sentences(caption, rng)
        return self._video_finish(caption, meta)

    def video_candidates(self, meta: dict[str, Any]) -> list[str]:
        bases, _ = _video_bases(meta)
        found = [v for b in bases for v in ([b] + (sentence_prefixes(b) if self.short_caption_prob > 0 else []))]
        return list(dict.fromkeys(self._video_finish(c, meta) for c in found))

    def _video_finish(self, caption: str, meta: dict[str, Any]) -> str:
        quality = _text(meta, "quality_prompt")
        caption = f"{caption} {quality}" if quality else caption
        return self._prefix(caption, video_task(meta.get("first_frame_condition") is True))

    # -------------------------------------------------------------------------------------------------- both
    def choose(self, kind: str, meta: dict[str, Any], rng: random.Random) -> str:
        """The caption of a jsonl line of ``kind`` (``"image"`` / ``"video"``); ``BadSample`` where it has none."""
        return self.image(meta, rng) if _kind(kind) == "image" else self.video(meta, rng)

    def candidates(self, kind: str, meta: dict[str, Any]) -> list[str]:
        """Every caption :meth:`choose` can return for ``meta``, without duplicates, in a fixed order."""
        return self.image_candidates(meta) if _kind(kind) == "image" else self.video_candidates(meta)

    def _prefix(self, caption: str, task: str) -> str:
        return with_prefix(caption, task) if self.prompt_prefix else caption


def _kind(kind: str) -> str:
    if kind not in CAPTION_FIELDS:
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    return kind


def caption_fields(kind: str, meta: dict[str, Any]) -> str:
    """The caption-relevant fields of a jsonl line as a JSON string (a batch keeps strings as lists)."""
    return json.dumps({k: meta[k] for k in CAPTION_FIELDS[_kind(kind)] if k in meta}, sort_keys=True)
