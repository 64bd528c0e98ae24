"""Writing WebDataset shards: atomically, deterministically, never touching the sources.

Every source file is opened read-only (``open(path, "rb")``) and never modified, moved or deleted (the official
dataset code deletes the videos it reads — facts §6.2). Each shard is written to a temporary name in the output
folder and renamed when complete, so a crash never leaves a truncated ``.tar`` that looks finished; an
``index.json`` listing the shards is written last.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from grn.io import atomic_write_json

__all__ = ["ShardWriter", "iter_image_folder", "iter_jsonl_media", "safe_key", "write_shards"]

log = logging.getLogger(__name__)

_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")


def safe_key(text: str) -> str:
    """A sample key webdataset groups correctly: no dots (they start the extension) and no slashes."""
    return _KEY_BAD.sub("_", text)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True).encode()
    raise TypeError(f"cannot write a {type(value).__name__} into a shard; encode it to bytes first")


class ShardWriter:
    """Writes samples (``{"__key__": str, ext: bytes | str | int | dict}``) into ``{prefix}-{i:06d}.tar`` files of
    at most ``max_count`` samples / ``max_bytes`` bytes. Use as a context manager; :attr:`shards` lists the
    finished files. Tar members get a fixed mtime, so the same samples give byte-identical shards."""

    def __init__(self, out_dir: str | os.PathLike, prefix: str = "shard", max_count: int = 1000,
                 max_bytes: int = 1 << 30) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_count, self.max_bytes = prefix, int(max_count), int(max_bytes)
        self.shards: list[Path] = []
        self.count = 0
        self._tar: tarfile.TarFile | None = None
        self._tmp: str | None = None
        self._n = self._size = 0

    def _open(self) -> None:
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.prefix}.", suffix=".tmp", dir=self.out_dir)
        self._tar = tarfile.open(fileobj=os.fdopen(fd, "wb"), mode="w", format=tarfile.USTAR_FORMAT)
        self._n = self._size = 0

    def _close(self) -> None:
        if self._tar is None:
            return
        fileobj = self._tar.fileobj
        self._tar.close()
        fileobj.flush()
        os.fsync(fileobj.fileno())
        fileobj.close()
        final = self.out_dir / f"{self.prefix}-{len(self.shards):06d}.tar"
        os.replace(self._tmp, final)
        self.shards.append(final)
        self._tar = self._tmp = None

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        if safe_key(key) != key:
            raise ValueError(f"sample key {key!r} has characters webdataset would split on; use safe_key()")
        if self._tar is None:
            self._open()
        for ext in sorted(k for k in sample if not k.startswith("__")):
            data = _as_bytes(sample[ext])
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self._tar.addfile(info, io.BytesIO(data))
            self._size += len(data) + 1024
        self._n += 1
        self.count += 1
        if self._n >= self.max_count or self._size >= self.max_bytes:
            self._close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._close()
        elif self._tar is not None:  # failed: leave no half shard behind
            fileobj = self._tar.fileobj
            self._tar.close()
            fileobj.close()
            os.remove(self._tmp)


def write_shards(samples: Iterable[dict[str, Any]], out_dir: str | os.PathLike, *, prefix: str = "shard",
                 max_count: int = 1000, info: dict | None = None) -> list[Path]:
    """Write ``samples`` into shards under ``out_dir``, then ``{prefix}-index.json`` (shard names, sample count
    and ``info``). Returns the shard paths."""
    with ShardWriter(out_dir, prefix=prefix, max_count=max_count) as writer:
        for sample in samples:
            writer.write(sample)
    atomic_write_json(
        {"shards": [p.name for p in writer.shards], "num_samples": writer.count, **(info or {})},
        Path(out_dir) / f"{prefix}-index.json",
    )
    return writer.shards


def read_only(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:  # read-only; the source is never changed or removed
        return f.read()


def iter_image_folder(root: str | os.PathLike, *, shuffle: bool = True, seed: int = 0,
                      exts: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")) -> tuple[list[str], Iterator[dict]]:
    """ImageNet-style folder (one sub-folder per class, classes sorted by name as torchvision's ImageFolder) →
    (class names, samples ``{"__key__", <ext>: original bytes, "cls": id}``).

    The file order is shuffled under ``seed`` (default) so that every shard mixes classes — a shuffle buffer
    alone cannot mix a class-sorted set.
    """
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    files = [(c, p) for c, name in enumerate(classes) for p in sorted((root / name).rglob("*"))
             if p.suffix.lower() in exts and p.is_file()]
    if not files:
        raise ValueError(f"no images ({', '.join(exts)}) under {root}")
    if shuffle:
        random.Random(seed).shuffle(files)

    def gen() -> Iterator[dict]:
        for i, (c, path) in enumerate(files):
            ext = path.suffix.lower().lstrip(".")
            yield {"__key__": f"{i:09d}", "jpg" if ext == "jpeg" else ext: read_only(path), "cls": c,
                   "json": {"path": str(path.relative_to(root)), "class": classes[c]}}

    return classes, gen()


def iter_jsonl_media(jsonl_paths: Iterable[str | os.PathLike], *, media_root: str | os.PathLike | None = None,
                     stats: dict[str, int] | None = None, kind: str | None = None) -> Iterator[dict]:
    """The official T2I/T2V jsonl lines (facts §5.2) → samples with the media bytes and the line as ``json``.

    An ``image_path`` line gives ``{<ext>: bytes, "json": line}``; a ``video_path`` line gives
    ``{"mp4": bytes, "json": line}`` with the frame range kept in the json (the reader seeks into it). Relative
    paths resolve against ``media_root`` (default: the jsonl's folder). Unreadable lines and missing media are
    skipped and counted in ``stats`` (``bad_json``: not a JSON object, ``no_media_key``, ``bad_path``: a path
    that is not a non-empty string, ``missing_media``). ``kind`` (``"image"`` / ``"video"``) keeps only the lines
    of that kind (the official toy files mix both); the others are counted as ``other_kind``.
    """
    if kind not in (None, "image", "video"):
        raise ValueError(f"kind must be 'image', 'video' or None, got {kind!r}")
    stats = stats if stats is not None else {}
    n = 0
    for jsonl in jsonl_paths:
        jsonl = Path(jsonl)
        base = Path(media_root) if media_root is not None else jsonl.parent
        with open(jsonl, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    meta = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    meta = None
                if not isinstance(meta, dict):
                    stats["bad_json"] = stats.get("bad_json", 0) + 1
                    log.warning("%s:%d is not a JSON object; skipped", jsonl, line_no)
                    continue
                field = "video_path" if "video_path" in meta else "image_path" if "image_path" in meta else None
                if field is None:
                    stats["no_media_key"] = stats.get("no_media_key", 0) + 1
                    continue
                if kind is not None and field != f"{kind}_path":
                    stats["other_kind"] = stats.get("other_kind", 0) + 1
                    continue
                if not isinstance(meta[field], str) or not meta[field]:
                    stats["bad_path"] = stats.get("bad_path", 0) + 1
                    log.warning("%s:%d: %s is %r, not a path; skipped", jsonl, line_no, field, meta[field])
                    continue
                path = Path(meta[field])
                path = path if path.is_absolute() else base / path
                try:
                    data = read_only(path) if path.is_file() else None
                except (OSError, ValueError):  # unreadable, or a NUL byte in the path
                    data = None
                if data is None:
                    stats["missing_media"] = stats.get("missing_media", 0) + 1
                    log.warning("%s:%d: %s not found or unreadable; skipped", jsonl, line_no, path)
                    continue
                ext = "mp4" if field == "video_path" else path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
                yield {"__key__": f"{n:09d}", ext: data, "json": meta}
                n += 1
