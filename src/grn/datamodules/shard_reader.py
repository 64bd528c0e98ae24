"""Tar shard → samples ``{"__key__", "__url__", ext: bytes}``, resynchronising after damage and counting every
sample lost on the way (:func:`shard_samples`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import webdataset as wds

from grn.datamodules.bad_samples import BadSampleCounter, Limits
from grn.datamodules.tar_stream import TarStream, tar_events

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # "dir/key.ext.more" -> ("dir/key", "ext.more")


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
                stream = TarStream(raw)
            except (OSError, ValueError) as err:
                self.lose("unreadable_tar", f"cannot read: {type(err).__name__}: {err}")
                return
            for event in tar_events(stream, self.max_member_bytes):
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

