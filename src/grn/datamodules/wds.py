"""The one WebDataset pipeline builder: shards → samples → shuffle → decode → batches, resumable and exact.

The pipeline follows open_clip's recipe for cluster training:

* **Shard patterns** with brace expansion (``data/train-{000000..000099}.tar``), several sources joined by ``::``
  or given as a list, each with a weight (a source's weight is its share of the drawn shards, whatever its shard
  count).
* **Resampled shards** (``resampled=True``, the cluster default): every rank and worker draws shards with
  replacement from its own seeded stream and stops after ``batches_per_worker`` batches — webdataset's
  ``with_epoch`` — so every rank sees the same number of batches and DDP never hangs on a short rank.
  Without resampling the shard list is permuted per epoch (the same permutation everywhere), split by node and
  then by worker; fewer shards than ``workers × ranks`` is a start-up error, because some workers would get
  none.
* **Shuffle before decode**: a buffer of raw (undecoded) samples is shuffled, so decoding is done once per sample
  and the buffer holds compressed bytes, not pixels.
* **Deterministic under a seed**: shard draws, the shuffle buffer and every per-sample random choice (flip, crop,
  clip start) come from ``(seed, epoch, rank, worker[, sample index])``. Same seed → same batches.
* **Bad samples** are skipped and counted (:mod:`grn.datamodules.bad_samples`): damaged shards lose only what the
  damage touched (:func:`shard_samples` reads every header itself and resynchronises after a bad one; every loss
  is counted), and samples over the size limits are skipped before they are decoded.
* **Exact resume**: every batch carries ``batch["_data"]`` — the worker that made it, how many raw samples that
  worker had drawn, the samples still waiting in its batcher, its batch count and bad-sample totals. The DataModule
  (:class:`ShardDataModule`) records this for the batches the trainer actually consumed
  (``on_before_batch_transfer``, which also removes the key) and stores it in the checkpoint. On resume, each
  worker replays its raw stream — reading bytes, not decoding them — up to the stored position, and the worker
  ids are rotated so that the DataLoader's round-robin continues with the worker that was next. The batches after
  a restart are exactly those an uninterrupted run would have seen.
"""

from __future__ import annotations

import bz2
import dataclasses
import glob
import gzip
import logging
import lzma
import os
import random
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from grn.datamodules.bad_samples import BAD_REASONS, BadSample, BadSampleCounter, Limits

__all__ = [
    "Batcher",
    "ResumableLoader",
    "ShardDataModule",
    "ShardStream",
    "expand_shards",
    "sample_rng",
]

log = logging.getLogger(__name__)

Decoder = Callable[[dict[str, Any], random.Random], dict[str, Any]]


# ------------------------------------------------------------------------------------------------ shard lists
def expand_shards(
    shards: str | Sequence[str], weights: Sequence[float] | None = None
) -> tuple[list[str], list[float]]:
    """Shard patterns → (urls, per-url weights).

    Args:
        shards: a pattern string (sources separated by ``::``, braces expanded) or a list of such patterns, one
            per source. Local patterns may also use glob wildcards (``dir/*.tar``).
        weights: one weight per source (default: all 1). A source's shards share its weight equally, so the
            weight is the source's share of drawn shards in resampled mode.

    Returns:
        ``urls`` (sorted within a source, sources in the given order) and a weight per url summing to 1.
    """
    sources = shards.split("::") if isinstance(shards, str) else [str(s) for s in shards]
    if not sources or not all(sources):
        raise ValueError(f"empty shard pattern in {shards!r}")
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources):
        raise ValueError(f"{len(weights)} weights for {len(sources)} shard sources ({shards!r})")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"source weights must be >= 0 with a positive sum, got {weights}")
    urls: list[str] = []
    url_weights: list[float] = []
    for pattern, w in zip(sources, weights):
        expanded = wds.shardlists.expand_urls(pattern)
        if "://" not in pattern and not pattern.startswith("pipe:"):
            # local files: glob wildcards too, and fail now (not in a worker, hours later) if nothing matches
            expanded = sorted({p for e in expanded for p in (glob.glob(e) if glob.has_magic(e) else [e])})
            missing = [p for p in expanded if not os.path.isfile(p)]
            if not expanded or missing:
                raise FileNotFoundError(
                    f"shard pattern {pattern!r} matches no file"
                    + (f" (missing: {missing[0]}{' …' if len(missing) > 1 else ''})" if missing else "")
                    + "; write shards with scripts/make_shards.py or fix data.*shards"
                )
        urls.extend(expanded)
        url_weights.extend([w / len(expanded)] * len(expanded))
    total = sum(url_weights)
    return urls, [w / total for w in url_weights]


def check_sources_readable(shards: str | Sequence[str]) -> None:
    """Start-up check: every source of ``shards`` has a shard that opens and starts with a tar header (local files;
    remote and ``pipe:`` urls are not opened here). Raises ``ValueError`` (one line) naming the source otherwise.
    Shards are tried in order until one is readable, so a healthy source costs one open."""
    sources = shards.split("::") if isinstance(shards, str) else [str(s) for s in shards]
    for pattern in sources:
        if "://" in pattern or pattern.startswith("pipe:"):
            continue
        urls = expand_shards(pattern)[0]
        first = None
        for url in urls:
            why = probe_shard(url)
            if why is None:
                break
            first = first or f"{url}: {why}"
        else:
            raise ValueError(f"no readable shard in {pattern!r} ({len(urls)} tried; {first}); rewrite them with "
                             "scripts/make_shards.py or fix data.*shards")


def _seed_of(*parts: int) -> int:
    """A 64-bit seed from integers (SeedSequence mixes them well; ``hash`` of a tuple would correlate)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0])


def sample_rng(seed: int, epoch: int, rank: int, worker: int, index: int) -> random.Random:
    """The random stream of one sample: a pure function of its position, so a replay after resume (which skips
    decoding) cannot shift the choices of later samples."""
    # int tuples hash deterministically across processes (no PYTHONHASHSEED for ints), and this is cheap
    return random.Random(hash((seed, epoch, rank, worker, index)))


# ------------------------------------------------------------------------------------------------ tar reading
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # "dir/key.ext.more" -> ("dir/key", "ext.more")
_BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(_BLOCK)
_MAX_EXT_HEADER = 1 << 16  # a pax / GNU long-name record larger than this is damage, not a name
_CHUNK = 1 << 20           # members over the size limit are skipped in reads of this size
_COMPRESSED = ((b"\x1f\x8b", "gzip", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
               (b"BZh", "bzip2", lambda f: bz2.BZ2File(f, mode="rb")),
               (b"\xfd7zXZ\x00", "xz", lambda f: lzma.LZMAFile(f, mode="rb")))


class _StreamError(Exception):
    """The shard's byte stream failed: ``reason`` is ``truncated_tar`` (it ends early) or ``corrupt_tar``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class _Prefixed:
    """A read-only stream with ``head`` put back in front (the bytes read to recognise a compression)."""

    def __init__(self, head: bytes, f) -> None:
        self.head, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.f.read(n)
        if n < 0:
            out, self.head = self.head + self.f.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out if len(out) == n else out + self.f.read(n - len(out))

    def readable(self) -> bool:
        return True


class _TarStream:
    """The decompressed bytes of a shard (gzip, bzip2 and xz are recognised by their magic bytes, whatever the
    file's name), read exactly, with the position; stream failures become :class:`_StreamError`."""

    def __init__(self, raw) -> None:
        head = raw.read(6)
        codec = next((c for c in _COMPRESSED if head.startswith(c[0])), None)
        self.compression = codec[1] if codec else None
        self.f = codec[2](_Prefixed(head, raw)) if codec else _Prefixed(head, raw)
        self.pos = 0

    def read(self, n: int) -> bytes:
        parts, want = [], n
        try:
            while want > 0:
                data = self.f.read(want)
                if not data:
                    break
                parts.append(data)
                want -= len(data)
        except (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as err:
            reason = "truncated_tar" if isinstance(err, EOFError) else "corrupt_tar"
            raise _StreamError(reason, f"{self.compression or 'file'} stream at byte {self.pos + n - want}: "
                                       f"{type(err).__name__}: {err}") from None
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        """Read and drop ``n`` bytes in bounded chunks; returns how many there were."""
        done = 0
        while done < n:
            data = self.read(min(_CHUNK, n - done))
            if not data:
                break
            done += len(data)
        return done


def _parse_header(block: bytes) -> tarfile.TarInfo | None:
    """The tar header in ``block`` (checksum verified by ``tarfile``), or None where it is not one."""
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except Exception:  # noqa: BLE001 - any bytes may arrive here; whatever fails to parse is not a header
        return None


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<len> <key>=<value>\\n"`` records of a pax extended header (ValueError where they do not parse)."""
    out, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= space - pos or pos + length > len(data) or data[pos + length - 1] != 0x0A:
            raise ValueError(f"pax record of length {length} at {pos}")
        key, sep, value = data[space + 1 : pos + length - 1].partition(b"=")
        if not sep:
            raise ValueError(f"pax record without '=' at {pos}")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _tar_events(stream: _TarStream, max_member_bytes: int) -> Iterator[tuple]:
    """The regular files of a tar stream, and its damage, in order:

    * ``("member", name, data)``, or ``("member", name, None, size)`` for a member over ``max_member_bytes``
      (skipped unread);
    * ``("damage", start, end)``: bytes ``[start, end)`` held no valid header where one was due (a flipped byte or
      garbage in a header, zeroed blocks followed by more data); reading resumed at the next valid header, at
      ``end`` (or the damage ran to the end of the file). Archives concatenated (``cat a.tar b.tar``) read as
      damage too, and lose nothing but that count;
    * last, ``("end", reason, detail, headers, boundary)``: ``reason`` None for a clean end of archive, else
      ``truncated_tar`` / ``corrupt_tar``; ``headers`` counts the valid headers read; ``boundary``: the stream
      ended or failed where a header was due (the member before it is whole).

    Python's ``tarfile`` takes the first bad header for the end of the archive and drops the rest silently; this
    reader checks every 512-byte block where a header is due and resynchronises on the next valid one.
    """
    zeros = 0                 # end-of-archive (all-zero) blocks in a row where a header was due
    bad: int | None = None    # start of the damaged region being skipped
    headers = 0
    boundary = True           # the stream is where a header is due
    name: str | None = None   # from a GNU long-name or pax header, for the next member
    size: int | None = None   # from a pax header
    try:
        while True:
            at = stream.pos
            boundary = True
            block = stream.read(_BLOCK)
            if len(block) < _BLOCK:
                if bad is not None:
                    yield ("damage", bad, at)
                    yield ("end", "corrupt_tar", f"no valid header from byte {bad} to the end", headers, True)
                elif zeros and not block:
                    yield ("end", None, "", headers, True)
                else:
                    yield ("end", "truncated_tar", f"file ends at byte {at + len(block)} without the "
                                                   "end-of-archive blocks (cut short)", headers, not block)
                return
            if block == _ZERO_BLOCK:
                if bad is None:
                    zeros += 1
                continue
            info = _parse_header(block)
            if info is None:
                if bad is None:
                    bad = at - _BLOCK * zeros  # zero blocks then garbage: a zeroed header, not the archive's end
                continue
            headers += 1
            if bad is not None:
                yield ("damage", bad, at)
                bad, name, size = None, None, None
            elif zeros:  # zeroed blocks where a header was due (tarfile would have stopped here, silently)
                yield ("damage", at - _BLOCK * zeros, at)
                name, size = None, None
            zeros = 0
            boundary = False
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                             tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
                if info.size > _MAX_EXT_HEADER:
                    bad = at
                    continue
                data = stream.read(-(-info.size // _BLOCK) * _BLOCK)[: info.size]
                if len(data) < info.size:
                    yield ("end", "truncated_tar", f"file ends inside the header at byte {at}", headers, False)
                    return
                try:
                    if info.type == tarfile.GNUTYPE_LONGNAME:
                        name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    elif info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                        records = _pax_records(data)
                        name = records.get("path", name)
                        size = int(records["size"]) if "size" in records else size
                        if size is not None and size < 0:
                            raise ValueError(f"pax size {size}")
                except ValueError:
                    bad = at
                continue
            member_name = name if name is not None else info.name
            member_size = size if size is not None else info.size
            name = size = None
            if not (info.isreg() or info.type not in tarfile.SUPPORTED_TYPES):
                continue  # directories, links, devices: no data blocks
            padded = -(-member_size // _BLOCK) * _BLOCK
            sample_file = info.isreg() and info.type != tarfile.GNUTYPE_SPARSE
            if sample_file and member_size <= max_member_bytes:
                data = stream.read(member_size)
                if len(data) < member_size or stream.skip(padded - member_size) < padded - member_size:
                    yield ("end", "truncated_tar", f"file ends inside {member_name} (at byte {stream.pos})",
                           headers, False)
                    return
                yield ("member", member_name, data)
            else:
                if stream.skip(padded) < padded:
                    yield ("end", "truncated_tar", f"file ends inside {member_name} (at byte {stream.pos})",
                           headers, False)
                    return
                if sample_file:
                    yield ("member", member_name, None, member_size)
    except _StreamError as err:
        if bad is not None:
            yield ("damage", bad, stream.pos)
        yield ("end", err.reason, err.detail, headers, boundary and bad is None)


class _ShardReader:
    """Groups the members of one shard into samples ``{"__key__", "__url__", ext: bytes}`` and counts every sample
    lost on the way (see :func:`shard_samples`)."""

    def __init__(self, url: str, counter: BadSampleCounter, max_member_bytes: int) -> None:
        self.url, self.counter, self.max_member_bytes = url, counter, int(max_member_bytes)
        self.current: dict[str, Any] | None = None
        self.drop: tuple[str, str] | None = None      # (reason, detail): the current sample is to be skipped
        self.seen: set[str] = set()                   # keys of this shard so far
        self.usual: frozenset[str] | None = None      # the members of the last intact sample
        self.region: dict | None = None               # the damaged region the current sample follows
        self.skip_key: str | None = None              # members of a sample already dropped at a damage
        self.lost = 0

    def lose(self, reason: str, detail: str) -> None:
        self.lost += 1
        self.counter.add(reason, detail, shard=self.url)

    def _finish(self) -> dict | None:
        """End the current sample: the sample to yield, or None where it was dropped (and counted)."""
        sample, drop, self.current, self.drop = self.current, self.drop, None, None
        if sample is None:
            return None
        key = sample["__key__"]
        exts = frozenset(k for k in sample if not k.startswith("__"))
        region, self.region = self.region, None
        if drop is not None:
            self.lose(*drop)
            sample = None
        elif region is not None and exts != self.usual:  # it may have lost members to the damage before it
            self.lose("corrupt_tar", f"{key} follows damage at bytes {region['span']}: has {sorted(exts)}, "
                                     f"the samples before had {sorted(self.usual or ())}")
            region["lost"] += 1
            sample = None
        else:
            self.usual = exts
        if region is not None:
            self._close(region)
        return sample

    def _close(self, region: dict) -> None:
        if not region["lost"]:  # no sample next to it is incomplete: a whole sample (or more) was where it is
            self.lose("corrupt_tar", f"damage at bytes {region['span']}: no sample next to it is incomplete, one "
                                     "or more were where it is")

    def damage(self, start: int, end: int) -> dict | None:
        """Damage before the next member: the sample being read is kept only if it has the usual members."""
        region = {"span": f"{start}-{end}", "lost": 0}
        out = None
        if self.current is not None:
            if self._intact():
                out = self._finish()
            else:
                self.skip_key = self.current["__key__"]
                self.drop = self.drop or ("corrupt_tar", f"{self.skip_key} is cut by damage at bytes {start}-{end}")
                region["lost"] += 1
                if self.region is not None:
                    self.region["lost"] += 1  # the sample after one damage and before another
                    self._close(self.region)
                    self.region = None
                self.lose(*self.drop)
                self.current, self.drop = None, None
        elif self.region is not None:
            self._close(self.region)
        self.region = region
        return out

    def member(self, name: str, data: bytes | None, size: int = 0) -> dict | None:
        """Add a member; returns the previous sample when this one starts a new sample."""
        match = _KEY_EXT.match(name)
        if match is None or os.path.basename(name).startswith("."):
            return None
        key, ext = match.group(1), match.group(2).lower()
        if ext.startswith("__"):
            return None  # would overwrite __key__ / __url__
        if key == self.skip_key:
            return None  # the rest of a sample dropped at a damage
        self.skip_key = None
        out = None
        if self.current is not None and (self.current["__key__"] != key or ext in self.current):
            out = self._finish()
        if self.current is None:
            self.current = {"__key__": key, "__url__": self.url}
            if key in self.seen:
                self.drop = ("duplicate_key", f"{key} again (the first one is kept)")
            self.seen.add(key)
            if self.region is not None and self.usual is None:
                self.drop = self.drop or ("corrupt_tar", f"{key} follows damage at bytes {self.region['span']}")
                self.region["lost"] += 1
        if data is None and self.drop is None:
            self.drop = ("too_large", f"{name} holds {size} bytes > data.max_member_bytes={self.max_member_bytes}")
        self.current[ext] = data
        return out

    def _intact(self) -> bool:
        """The current sample has the members of the last intact one (and nothing marks it)."""
        exts = frozenset(k for k in self.current if not k.startswith("__"))
        return self.drop is None and self.region is None and self.usual is not None and exts == self.usual

    def end(self, reason: str | None, detail: str, headers: int, boundary: bool) -> dict | None:
        out = None
        if reason is None:
            out = self._finish()
        elif headers == 0:
            self.current, self.region = None, None
            self.lose("unreadable_tar", f"no tar header in it: {detail}")
        else:
            lost_current = False
            if self.current is not None and boundary and self._intact():
                out = self._finish()  # cut where a header was due, after a sample with the usual members
            elif self.current is not None:
                self.current, self.drop, lost_current = None, None, True  # the sample being read is incomplete
            # one count for the sample being read, or for what a cut or a failed stream took after it; damage that
            # ran to the end of the file is counted with its region
            if lost_current or reason == "truncated_tar" or self.region is None:
                self.lose(reason, detail)
                if self.region is not None:
                    self.region["lost"] += 1
        if self.region is not None:
            self._close(self.region)
            self.region = None
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            raw = wds.gopen(self.url, "rb")
        except Exception as err:  # noqa: BLE001 - gopen raises what the opener raises (OSError, ValueError, ...)
            self.lose("unreadable_tar", f"cannot open: {type(err).__name__}: {err}")
            return
        with raw:
            try:
                stream = _TarStream(raw)
            except (OSError, ValueError) as err:
                self.lose("unreadable_tar", f"cannot read: {type(err).__name__}: {err}")
                return
            for event in _tar_events(stream, self.max_member_bytes):
                out = getattr(self, event[0])(*event[1:])
                if out is not None:
                    yield out


def shard_samples(urls: Iterator[str], counter: BadSampleCounter, max_member_bytes: int = Limits.max_member_bytes,
                  max_bad_shards_in_a_row: int | None = 100) -> Iterator[dict[str, Any]]:
    """Samples ``{"__key__", "__url__", ext: bytes}`` of the shards in ``urls``, in file order; every sample lost
    on the way is counted in ``counter``, and each damaged shard is logged once, by name.

    * A shard cut short counts ``truncated_tar`` once: the samples before the cut are kept, the one being read is
      dropped (it may be incomplete).
    * A damaged header or garbage inside a shard (a flipped byte, an overwritten or zeroed block) does not end it:
      reading resumes at the next valid header. The sample the damage cut, and the one after it where its members
      differ from the samples before (it may have lost its first ones), are dropped and counted as
      ``corrupt_tar``; a damage with no incomplete sample on either side counts once (a whole sample, or more,
      was where it is; or, rarely, nothing: garbage after the end-of-archive blocks counts too).
    * A damaged compressed stream ends the shard (gzip cannot resynchronise): ``corrupt_tar`` (``truncated_tar``
      when it just ends early), once.
    * A shard that cannot be opened or holds no tar header counts ``unreadable_tar``.
    * A key the shard already had counts ``duplicate_key`` (whether adjacent or apart; the first one is kept).
    * A member over ``max_member_bytes`` is skipped unread and its sample counted as ``too_large``.

    Gzip, bzip2 and xz shards are read through their decompressor, so the end-of-archive check sees tar bytes.
    ``max_bad_shards_in_a_row`` shards in a row that lose samples and yield none stop the stream with one line
    (resampled shards would otherwise be drawn forever).
    """
    bad_in_a_row = 0
    for url in urls:
        reader = _ShardReader(url, counter, max_member_bytes)
        got = 0
        for sample in reader:
            got += 1
            yield sample
        bad_in_a_row = bad_in_a_row + 1 if reader.lost and not got else 0
        if max_bad_shards_in_a_row is not None and bad_in_a_row >= max_bad_shards_in_a_row:
            raise RuntimeError(f"{bad_in_a_row} shards in a row gave no sample (last: {url}; totals "
                               f"{ {k: v for k, v in counter.counts.items() if v} }): the shards are damaged or "
                               "unreadable (see the warnings above)")


def probe_shard(url: str) -> str | None:
    """None where ``url`` opens and starts with a tar header (after decompression), else why not (one line)."""
    try:
        with wds.gopen(url, "rb") as raw:
            block = _TarStream(raw).read(_BLOCK)
    except _StreamError as err:
        return err.detail
    except Exception as err:  # noqa: BLE001 - whatever the opener raises
        return f"{type(err).__name__}: {err}"
    if block == _ZERO_BLOCK:
        return "an empty archive"
    if len(block) < _BLOCK or _parse_header(block) is None:
        return "not a tar file (no tar header at its start)"
    return None


# ---------------------------------------------------------------------------------------------------- batching
class Batcher:
    """Groups decoded samples into batches of ``batch_size``; ``pending`` are raw indices not yet in a batch.

    Subclasses (aspect-ratio buckets) override :meth:`add`; the contract is that :meth:`add` returns the batches
    that became full, each as a list of samples, and :meth:`pending` the raw indices of samples held back.
    """

    def __init__(self, batch_size: int, drop_last: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self._buf: list[tuple[int, dict]] = []

    def add(self, index: int, sample: dict) -> list[list[dict]]:
        self._buf.append((index, sample))
        if len(self._buf) < self.batch_size:
            return []
        out, self._buf = [s for _, s in self._buf], []
        return [out]

    def flush(self) -> list[list[dict]]:
        """At the end of a finite stream: the last, partial batch unless ``drop_last``."""
        out, self._buf = [s for _, s in self._buf], []
        return [out] if out and not self.drop_last else []

    def pending(self) -> list[int]:
        return [i for i, _ in self._buf]

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """One batch from its samples; subclasses pad variable-length fields (text features)."""
        return collate(samples)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors / numbers; strings (captions, keys) stay lists."""
    return default_collate(samples)


# ------------------------------------------------------------------------------------------------- the stream
class ShardStream(IterableDataset):
    """Batches from WebDataset shards, for one rank; see the module docstring for the guarantees.

    Args:
        urls, url_weights: from :func:`expand_shards`.
        decode: ``decode(raw_sample, rng) -> sample dict``; raises :class:`BadSample` for bad input. ``rng`` is
            the sample's own :func:`sample_rng`.
        make_batcher: builds a fresh :class:`Batcher` per worker and epoch.
        resampled: draw shards with replacement (infinite stream, cut by ``batches_per_worker``).
        shuffle_buffer, shuffle_initial: raw-sample shuffle buffer (``<= 1`` disables shuffling).
        batches_per_worker: batches each worker yields per epoch (required when ``resampled``); ``None`` reads
            the worker's shards to the end.
        seed, rank, world_size: determinism and the node split.
        split_samples: split by *sample* (index modulo ranks × workers) instead of by shard — every worker reads
            every shard; for small validation sets that have fewer shards than readers.
        tag: ``"train"`` or ``"val"``, copied into ``batch["_data"]``.
        max_bad_in_a_row: this many bad samples in a row stop the run with an error (all data bad, or a
            setting no sample can meet, would otherwise spin forever on resampled shards).
        max_member_bytes: tar members larger than this are skipped unread (their sample counts ``too_large``).

    Set by the loader before each pass (:meth:`prepare`): ``epoch``, the per-logical-worker resume positions and
    the worker rotation.
    """

    def __init__(
        self,
        urls: list[str],
        url_weights: list[float],
        decode: Decoder,
        make_batcher: Callable[[], Batcher],
        *,
        resampled: bool,
        shuffle_buffer: int = 1000,
        shuffle_initial: int = 100,
        batches_per_worker: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split_samples: bool = False,
        tag: str = "train",
        log_every_s: float = 60.0,
        max_bad_in_a_row: int = 1000,
        max_member_bytes: int = Limits.max_member_bytes,
    ) -> None:
        super().__init__()
        if resampled and batches_per_worker is None:
            raise ValueError("resampled shards are an endless stream: set batches_per_worker (data.epoch_samples)")
        self.urls = list(urls)
        self.url_weights = list(url_weights)
        self.decode = decode
        self.make_batcher = make_batcher
        self.resampled = bool(resampled)
        self.shuffle_buffer = int(shuffle_buffer)
        self.shuffle_initial = int(min(shuffle_initial, max(shuffle_buffer, 1)))
        self.batches_per_worker = batches_per_worker
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.split_samples = bool(split_samples)
        self.tag = tag
        self.log_every_s = log_every_s
        self.max_bad_in_a_row = max_bad_in_a_row
        self.max_member_bytes = int(max_member_bytes)
        self.epoch = 0
        self.resume: dict[int, dict] = {}
        self.rotation = 0

    def prepare(self, epoch: int, resume: dict[int, dict] | None = None, rotation: int = 0) -> None:
        self.epoch = int(epoch)
        self.resume = dict(resume or {})
        self.rotation = int(rotation)

    def check_shard_count(self, num_workers: int) -> None:
        """Start-up check: without resampling every (rank, worker) needs at least one shard."""
        readers = max(num_workers, 1) * self.world_size
        if not self.resampled and not self.split_samples and len(self.urls) < readers:
            raise ValueError(
                f"{len(self.urls)} shards < {max(num_workers, 1)} workers x {self.world_size} ranks = {readers} "
                "readers: some would get no data; use data.resampled=true, fewer data.num_workers, or more shards"
            )

    def __len__(self) -> int:
        if self.batches_per_worker is None:
            raise TypeError("a shard stream read to the end has no known length (set data.epoch_samples)")
        info = get_worker_info()
        return self.batches_per_worker * (info.num_workers if info else self._num_workers_hint)

    _num_workers_hint = 1

    # ------------------------------------------------------------------------------------------ per worker
    def _shards(self, worker: int, num_workers: int) -> Iterator[str]:
        if self.resampled:
            rng = random.Random(_seed_of(self.seed, self.epoch, self.rank, worker, 1))
            while True:  # endless; the batch count ends the epoch
                yield rng.choices(self.urls, weights=self.url_weights)[0]
        order = list(self.urls)
        # one permutation per epoch, identical on every rank and worker, then split by node, then by worker
        random.Random(_seed_of(self.seed, self.epoch, 2)).shuffle(order)
        if not self.split_samples:
            order = order[self.rank :: self.world_size][worker::num_workers]
        yield from order

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        num_workers = info.num_workers if info else 1
        worker = ((info.id if info else 0) + self.rotation) % num_workers  # the logical worker this one plays
        state = self.resume.get(worker, {})
        skip_to = int(state.get("raw", 0))
        keep = set(state.get("pending", []))
        batches = int(state.get("batches", 0))
        if self.batches_per_worker is not None and batches >= self.batches_per_worker:
            return

        counter = BadSampleCounter(self.log_every_s, where=f"{self.tag} rank {self.rank} worker {worker}")
        raw: Iterator[dict] = shard_samples(self._shards(worker, num_workers), counter, self.max_member_bytes)
        if self.shuffle_buffer > 1:
            rng = random.Random(_seed_of(self.seed, self.epoch, self.rank, worker, 3))
            raw = wds.filters._shuffle(raw, self.shuffle_buffer, self.shuffle_initial, rng=rng)
        batcher = self.make_batcher()
        stride, offset = self.world_size * num_workers, self.rank * num_workers + worker

        def make(samples: list[dict], raw_count: int) -> dict[str, Any]:
            nonlocal batches
            batches += 1
            batch = batcher.collate(samples)
            bad = counter.snapshot()
            batch["_data"] = {
                "tag": self.tag,
                "epoch": self.epoch,
                "worker": worker,
                "num_workers": num_workers,
                "raw": raw_count,
                "pending": batcher.pending(),
                "batches": batches,
                "bad": bad,        # totals at this position (what a resume restores)
                "bad_seen": bad,   # totals to report; the worker's last batch adds what came after it
            }
            return batch

        def epoch_done() -> bool:
            return self.batches_per_worker is not None and batches >= self.batches_per_worker

        # A full batch is made once the next raw sample has been fetched, so its totals include the errors met
        # while fetching; its position is "every raw sample before `index` is done", and a replay restores the
        # totals at exactly that point (after fetching `index`, before decoding it). Each batch is then held
        # until the next one exists, so the worker's last batch can also report bad samples that followed it.
        ready: list[list[dict]] = []
        held: dict[str, Any] | None = None
        index, bad_run = -1, 0
        for index, sample in enumerate(raw):
            if index == skip_to and "bad" in state:
                counter.load(state["bad"])
            for samples in ready:
                if held is not None:
                    yield held
                held = make(samples, index)
                if epoch_done():
                    yield held
                    return
            ready = []
            if self.split_samples and index % stride != offset:
                continue
            replay = index < skip_to
            if not replay or index in keep:  # during replay only samples still waiting in a batcher are decoded
                full = self._decode_into(batcher, counter, index, sample, worker)
                bad_run = bad_run + 1 if full is None else 0
                if bad_run >= self.max_bad_in_a_row:
                    raise RuntimeError(
                        f"{bad_run} bad samples in a row in {sample.get('__url__')} (totals {counter.counts}): "
                        "the data or a data setting is wrong (see the warnings above)"
                    )
                if not replay and full:
                    ready = full
        if index + 1 == skip_to and "bad" in state:
            counter.load(state["bad"])
        for samples in ready + batcher.flush():
            if held is not None:
                yield held
            held = make(samples, index + 1)
            if epoch_done():
                break
        if held is not None:
            held["_data"]["bad_seen"] = counter.snapshot()
            yield held

    def _decode_into(self, batcher: Batcher, counter: BadSampleCounter, index: int, sample: dict, worker: int):
        rng = sample_rng(self.seed, self.epoch, self.rank, worker, index)
        try:
            decoded = self.decode(sample, rng)
        except BadSample as bad:
            counter.add(bad.reason, f"{sample.get('__key__')} in {sample.get('__url__')}: {bad.detail}")
            return None
        return batcher.add(index, decoded)


# ------------------------------------------------------------------------------------------------- the loader
class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`ShardStream` that tells the stream its epoch and resume position at every
    ``iter()`` (Lightning iterates the same loader once per epoch). ``position`` is a callable returning
    ``(epoch, resume, rotation)`` for the pass about to start; it comes from the owning DataModule."""

    def __init__(self, stream: ShardStream, position: Callable[[], tuple[int, dict, int]], **kwargs) -> None:
        kwargs.setdefault("batch_size", None)  # the stream batches itself
        # workers must be re-created per pass so that each one gets the new epoch / resume state
        kwargs["persistent_workers"] = False
        super().__init__(stream, **kwargs)
        self._position = position
        stream._num_workers_hint = max(self.num_workers, 1)

    def __iter__(self):
        epoch, resume, rotation = self._position()
        self.dataset.prepare(epoch, resume, rotation)
        return super().__iter__()


# ---------------------------------------------------------------------------------------------- data module
def _dist_rank_world(trainer) -> tuple[int, int]:
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataModule(L.LightningDataModule):
    """Base DataModule over WebDataset shards, with exact resume and bad-sample totals.

    Subclasses implement :meth:`decoder` (and optionally :meth:`batcher`). Train batches per rank per epoch:
    ``ceil(epoch_samples / (batch_size · world_size · workers))`` per worker (resampled mode), so all ranks agree.

    Args:
        train_shards, val_shards: shard patterns (see :func:`expand_shards`); ``val_shards`` may be ``None``.
        weights: per-source weights of ``train_shards``.
        batch_size: per-rank batch.
        num_workers: DataLoader workers per rank.
        resampled: resampled shards (cluster mode) or one pass over a per-epoch permutation.
        epoch_samples: samples per epoch over all ranks (required when ``resampled``; optional otherwise, where
            it caps each worker).
        shuffle_buffer, shuffle_initial: the raw-sample shuffle buffer.
        seed: everything random in the pipeline derives from it.
        drop_last: drop a final partial batch (finite mode).
        log_every_s: minimum seconds between two bad-sample log lines per worker.
        max_member_bytes, max_image_pixels, max_frame_pixels, max_aspect_ratio: what one sample may cost
            (:class:`~grn.datamodules.bad_samples.Limits`); larger samples are skipped and counted.

    ``bad_samples`` holds this rank's totals per reason (consumed batches only); ``state_dict`` /
    ``load_state_dict`` carry the data position in Lightning checkpoints.
    """

    def __init__(
        self,
        train_shards: str | Sequence[str],
        val_shards: str | Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        resampled: bool = True,
        epoch_samples: int | None = None,
        shuffle_buffer: int = 1000,
        shuffle_initial: int = 100,
        seed: int = 0,
        drop_last: bool = True,
        pin_memory: bool = False,
        log_every_s: float = 60.0,
        max_member_bytes: int = Limits.max_member_bytes,
        max_image_pixels: int = Limits.max_image_pixels,
        max_frame_pixels: int = Limits.max_frame_pixels,
        max_aspect_ratio: float = Limits.max_aspect_ratio,
    ) -> None:
        super().__init__()
        self.limits = Limits(max_member_bytes, max_image_pixels, max_frame_pixels, max_aspect_ratio)
        if resampled and not epoch_samples:
            raise ValueError("data.resampled=true needs data.epoch_samples (samples per epoch over all ranks)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.weights = weights
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.resampled = bool(resampled)
        self.epoch_samples = int(epoch_samples) if epoch_samples else None
        self.shuffle_buffer = int(shuffle_buffer)
        self.shuffle_initial = int(shuffle_initial)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.pin_memory = bool(pin_memory)
        self.log_every_s = float(log_every_s)
        # data position of the train stream (main process), see on_before_batch_transfer / state_dict
        self._epoch = 0            # epoch of the pass in progress (or of the next one)
        self._consumed = 0         # batches of that epoch the trainer consumed
        self._workers: dict[int, dict] = {}  # logical worker -> its last consumed batch's position
        self._bad_done = {r: 0 for r in BAD_REASONS}  # totals of finished epochs
        self._resume: dict | None = None
        self._started = False
        self._per_rank_batches: int | None = None  # train batches per epoch on this rank, when known

    # ------------------------------------------------------------------------------------------- to override
    def decoder(self, split: str) -> Decoder:
        raise NotImplementedError

    def batcher(self, split: str) -> Batcher:
        return Batcher(self.batch_size, drop_last=self.drop_last if split == "train" else False)

    def transform_spec(self) -> dict[str, Any]:
        """What decides a sample's pixels (for token-cache keys); subclasses add their settings. Limits that differ
        from the defaults are part of it (they decide which samples are there)."""
        spec = {"kind": type(self).__name__, "train": str(self.train_shards), "val": str(self.val_shards)}
        changed = {k: v for k, v in dataclasses.asdict(self.limits).items() if v != getattr(Limits, k)}
        return {**spec, "limits": changed} if changed else spec

    def single_pass(self, split: str = "train", batch_size: int | None = None) -> ShardDataModule:
        """A copy that reads ``split`` once, in a fixed order, with no random augmentation and nothing dropped —
        for encoding a dataset into a token cache."""
        import copy

        view = copy.copy(self)
        view.train_shards = self.train_shards if split == "train" else self.val_shards
        view.weights = None if split != "train" else self.weights
        view.resampled, view.epoch_samples, view.shuffle_buffer, view.drop_last = False, None, 0, False
        if batch_size is not None:
            view.batch_size = int(batch_size)
        if hasattr(view, "flip"):
            view.flip = False
        view._epoch, view._consumed, view._workers, view._resume, view._started = 0, 0, {}, None, False
        view._bad_done = {r: 0 for r in BAD_REASONS}
        return view

    # ----------------------------------------------------------------------------------------------- streams
    def batches_per_worker(self, world_size: int) -> int | None:
        if self.epoch_samples is None:
            return None
        readers = world_size * max(self.num_workers, 1)
        return max(1, -(-self.epoch_samples // (self.batch_size * readers)))

    def _stream(self, split: str) -> ShardStream:
        rank, world = _dist_rank_world(self.trainer)
        train = split == "train"
        urls, url_weights = expand_shards(
            self.train_shards if train else self.val_shards, self.weights if train else None
        )
        if train and not self.resampled and len(set(url_weights)) > 1:
            raise ValueError("source weights need data.resampled=true (a single pass reads every shard once)")
        stream = ShardStream(
            urls,
            url_weights,
            self.decoder(split),
            lambda: self.batcher(split),
            resampled=self.resampled and train,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            shuffle_initial=self.shuffle_initial,
            batches_per_worker=self.batches_per_worker(world) if train else None,
            seed=self.seed,
            rank=rank,
            world_size=world,
            split_samples=not train,
            tag=split,
            log_every_s=self.log_every_s,
            max_member_bytes=self.limits.max_member_bytes,
        )
        stream.check_shard_count(self.num_workers)
        check_sources_readable(self.train_shards if train else self.val_shards)
        return stream

    def train_dataloader(self) -> DataLoader:
        stream = self._stream("train")
        self._per_rank_batches = (
            stream.batches_per_worker * max(self.num_workers, 1) if stream.batches_per_worker else None
        )
        return ResumableLoader(stream, self._next_train_pass, num_workers=self.num_workers,
                               pin_memory=self.pin_memory)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_shards is None:
            return []
        return ResumableLoader(self._stream("val"), lambda: (0, {}, 0), num_workers=self.num_workers,
                               pin_memory=self.pin_memory)

    # ------------------------------------------------------------------------------------- position tracking
    def _next_train_pass(self) -> tuple[int, dict, int]:
        """Called at each train ``iter()``: the epoch to run, resume positions and worker rotation."""
        if self._resume is not None:
            state, self._resume = self._resume, None
            if state["num_workers"] != max(self.num_workers, 1) or state["world_size"] != _dist_rank_world(
                self.trainer
            )[1]:
                log.warning(
                    "data position saved with %s workers x %s ranks, now %s x %s: starting epoch %s afresh "
                    "(set data.num_workers as before for an exact resume)",
                    state["num_workers"], state["world_size"], max(self.num_workers, 1),
                    _dist_rank_world(self.trainer)[1], state["epoch"] + 1,
                )
                self._begin_epoch(state["epoch"] + 1)
                return self._epoch, {}, 0
            self._epoch, self._consumed = state["epoch"], state["consumed"]
            self._workers = {int(k): v for k, v in state["workers"].items()}
            self._started = True
            return self._epoch, dict(self._workers), self._consumed % max(self.num_workers, 1)
        if self._started:
            self._begin_epoch(self._epoch + 1)
        self._started = True
        return self._epoch, {}, 0

    def _begin_epoch(self, epoch: int) -> None:
        for reason, n in self._epoch_bad().items():
            self._bad_done[reason] += n
        self._epoch, self._consumed, self._workers = epoch, 0, {}

    def _epoch_bad(self) -> dict[str, int]:
        totals = {r: 0 for r in BAD_REASONS}
        for pos in self._workers.values():
            for reason, n in pos.get("bad_seen", pos["bad"]).items():
                totals[reason] += n
        return totals

    @property
    def bad_samples(self) -> dict[str, int]:
        """This rank's bad-sample totals per reason, over the train batches consumed so far (resume included)."""
        return {r: self._bad_done[r] + n for r, n in self._epoch_bad().items()}

    def record(self, batch: dict) -> dict:
        """Remove ``batch["_data"]`` and, for train batches, record the position it stands for. Lightning calls
        this through :meth:`on_before_batch_transfer`; call it yourself when iterating a loader by hand."""
        meta = batch.pop("_data", None) if isinstance(batch, dict) else None
        if meta is None or meta["tag"] != "train":
            return batch
        if meta["epoch"] != self._epoch:
            self._begin_epoch(meta["epoch"])
        self._workers[meta["worker"]] = {k: meta[k] for k in ("raw", "pending", "batches", "bad", "bad_seen")}
        self._consumed += 1
        return batch

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # called once per batch that enters a step (after Lightning's one-batch prefetch), so the recorded
        # position is exactly what the model has seen when a checkpoint is written
        return self.record(batch)

    def state_dict(self) -> dict[str, Any]:
        world = _dist_rank_world(self.trainer)[1]
        per_rank = self._per_rank_batches
        if per_rank is not None and self._consumed >= per_rank:
            # the epoch is complete: the restored run starts the next one, carrying this one's totals
            return {"epoch": self._epoch + 1, "consumed": 0, "workers": {}, "bad_done": self.bad_samples,
                    "num_workers": max(self.num_workers, 1), "world_size": world}
        return {
            "epoch": self._epoch,
            "consumed": self._consumed,
            "workers": {int(k): dict(v) for k, v in self._workers.items()},
            "bad_done": dict(self._bad_done),
            "num_workers": max(self.num_workers, 1),
            "world_size": world,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._bad_done = {r: int(state.get("bad_done", {}).get(r, 0)) for r in BAD_REASONS}
        self._workers = {}
        self._resume = {
            "epoch": int(state["epoch"]),
            "consumed": int(state["consumed"]),
            "workers": state.get("workers", {}),
            "num_workers": int(state["num_workers"]),
            "world_size": int(state["world_size"]),
        }
