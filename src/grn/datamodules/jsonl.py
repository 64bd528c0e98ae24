"""The official T2I/T2V jsonl data read as it is, without writing shards (official_update §C12).

The official toy layout::

    <root>/data/toy_data/jsonls/<folder>/<name>.jsonl     image and video lines mixed in one file
    <root>/data/toy_data/media/images/000000.jpg           paths in the lines are relative to <root>
    <root>/data/toy_data/media/videos/000000.mp4           (the official repo root)

Each jsonl file plays the part of a shard in the one pipeline (:mod:`grn.datamodules.wds`): files are drawn,
split over ranks and workers and resumed exactly as shards are, lines go through the raw shuffle buffer as
``{"__key__", "__url__", "json": line bytes, "path"}`` (no pixels), and the media file is read — read-only — only
when the line is decoded. :class:`JsonlTextImageDataModule` takes the image lines of the files and
:class:`JsonlTextVideoDataModule` the video lines (the others are passed over, not counted); captions, buckets,
per-example resolution and frame ranges (``begin_frame_id`` / ``end_frame_id``) follow the text datamodules
(:mod:`grn.datamodules.text`). ``data=toy_jsonl data.root=<dir>`` joins both for T2V training.

Bad lines are skipped and counted: a line that is not a JSON object (``wrong_type``), a line with neither
``image_path`` nor ``video_path`` (``missing_key``), media that is missing or unreadable (``missing_media``),
larger than ``max_member_bytes`` (``too_large``) or that does not decode (``decode_image`` / ``decode_video``).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from grn.datamodules.bad_samples import BadSample, BadSampleCounter
from grn.datamodules.text import TextImageDataModule, TextVideoDataModule
from grn.datamodules.wds import source_urls
from grn.datamodules.writers import read_only, safe_key

__all__ = ["JsonlLines", "JsonlTextImageDataModule", "JsonlTextVideoDataModule", "WithMedia", "jsonl_joint_source",
           "media_ext"]

_PATH_KEY = {"image": "image_path", "video": "video_path"}


def media_ext(kind: str, path: str) -> str:
    """The sample key a media file goes under: ``mp4`` for video, the image's suffix (``jpeg`` → ``jpg``)."""
    return "mp4" if kind == "video" else Path(path).suffix.lower().lstrip(".").replace("jpeg", "jpg")


class JsonlLines:
    """``read_samples`` of a :class:`~grn.datamodules.wds.ShardStream` over jsonl files: the lines of ``kind``
    (``"image"`` or ``"video"``) as raw samples, media paths resolved against ``media_root``."""

    def __init__(self, kind: str, media_root: str | os.PathLike) -> None:
        if kind not in _PATH_KEY:
            raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
        self.kind, self.media_root = kind, Path(media_root)

    def __call__(self, urls: Iterator[str], counter: BadSampleCounter, max_member_bytes: int = 0
                 ) -> Iterator[dict[str, Any]]:
        for url in urls:
            yield from self._lines(url, counter)

    def _lines(self, url: str, counter: BadSampleCounter) -> Iterator[dict[str, Any]]:
        name = f"{Path(url).parent.name}_{Path(url).stem}"
        try:
            f = open(url, "rb")  # read-only; the source is never changed
        except OSError as err:
            counter.add("missing_media", f"{url}: cannot open: {err}")
            return
        with f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{url}:{line_no}"
                try:
                    meta = json.loads(line)
                except (ValueError, RecursionError):
                    meta = None
                if not isinstance(meta, dict):
                    counter.add("wrong_type", f"{where} is not a JSON object")
                    continue
                field = _PATH_KEY[self.kind]
                if field not in meta:
                    if _PATH_KEY["video" if self.kind == "image" else "image"] not in meta:
                        counter.add("missing_key", f"{where} has neither image_path nor video_path")
                    continue  # a line of the other kind: the other part reads it
                path = meta[field]
                if not isinstance(path, str) or not path:
                    counter.add("wrong_type", f"{where}: {field} is {path!r}, not a path")
                    continue
                full = Path(path) if Path(path).is_absolute() else self.media_root / path
                yield {"__key__": safe_key(f"{name}_{line_no:07d}"), "__url__": url, "json": line,
                       "path": str(full)}


class WithMedia:
    """Wraps a text decoder: reads the media file a jsonl raw sample names (read-only, at most
    ``max_member_bytes``) into the sample, then decodes it; ``missing_media`` / ``too_large`` otherwise."""

    def __init__(self, decode: Callable[[dict, random.Random], dict], kind: str, max_member_bytes: int) -> None:
        self.decode, self.kind, self.max_member_bytes = decode, kind, int(max_member_bytes)

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        path = sample.get("path")
        if not isinstance(path, str):
            raise BadSample("missing_key", "no media path in the raw jsonl sample")
        try:
            size = os.stat(path).st_size
            if size > self.max_member_bytes:
                raise BadSample("too_large", f"{path} holds {size} bytes > data.max_member_bytes="
                                             f"{self.max_member_bytes}")
            data = read_only(path)
        except (OSError, ValueError) as err:  # missing, unreadable, a NUL byte in the path
            raise BadSample("missing_media", f"{path}: {type(err).__name__}: {err}") from None
        return self.decode({**sample, media_ext(self.kind, path): data}, rng)


class _JsonlSource:
    """What the jsonl datamodules add to the text ones: the reader, the start-up check and the media root."""

    kind: str
    media_root: Path
    limits: Any

    def raw_samples(self) -> JsonlLines:
        return JsonlLines(self.kind, self.media_root)

    def check_readable(self, shards: str | Sequence[str]) -> None:
        """Every source holds a jsonl file whose first non-empty line is a JSON object (one line, else)."""
        for urls in source_urls(shards):
            if not any(_first_line_is_json(u) for u in urls):
                raise ValueError(f"no jsonl file of {urls[0]} … ({len(urls)} files) starts with a JSON object line; "
                                 "point data.*shards at the official jsonl files")

    def decoder(self, split: str):
        return WithMedia(super().decoder(split), self.kind, self.limits.max_member_bytes)

    def transform_spec(self) -> dict[str, Any]:
        return {**super().transform_spec(), "media_root": str(self.media_root)}


def _first_line_is_json(url: str) -> bool:
    try:
        with open(url, "rb") as f:
            for line in f:
                if line.strip():
                    return isinstance(json.loads(line), dict)
    except (OSError, ValueError, RecursionError):
        return False
    return False


class JsonlTextImageDataModule(_JsonlSource, TextImageDataModule):
    """The image lines of official jsonl files as text–image batches (:class:`~grn.datamodules.text.
    TextImageDataModule`'s contract and settings).

    Args:
        train_shards, val_shards: jsonl file patterns (globs, braces, sources joined by ``::``).
        media_root: what the lines' ``image_path`` is relative to (the official repo root).
        **kwargs: :class:`~grn.datamodules.text.TextImageDataModule`'s settings.
    """

    def __init__(self, media_root: str | os.PathLike, **kwargs) -> None:
        super().__init__(**kwargs)
        self.media_root = Path(media_root)


class JsonlTextVideoDataModule(_JsonlSource, TextVideoDataModule):
    """The video lines of official jsonl files as text–video batches, cut by ``begin_frame_id`` /
    ``end_frame_id`` (:class:`~grn.datamodules.text.TextVideoDataModule`'s contract and settings).

    Args:
        train_shards, val_shards: jsonl file patterns.
        media_root: what the lines' ``video_path`` is relative to.
        **kwargs: :class:`~grn.datamodules.text.TextVideoDataModule`'s settings.
    """

    def __init__(self, media_root: str | os.PathLike, **kwargs) -> None:
        super().__init__(**kwargs)
        self.media_root = Path(media_root)


def jsonl_joint_source(image: JsonlTextImageDataModule, video: JsonlTextVideoDataModule, root: str | None = None,
                       jsonls: str | None = None, batch_size: int | None = None):
    """The image and video lines of the same jsonl files as one joint source (``data=toy_jsonl``): a
    :class:`~grn.datamodules.joint.JointSource`. ``root`` and ``jsonls`` are only what the parts' configs derive
    their paths from (``media_root: ${..root}``, ``train_shards: ${..jsonls}``)."""
    from grn.datamodules.joint import JointSource

    return JointSource(image, video, batch_size)
