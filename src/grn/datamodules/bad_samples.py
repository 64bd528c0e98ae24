"""Skip-and-count handling of bad samples in shard pipelines, and the size limits that bound a sample's memory.

A bad sample (damaged tar, undecodable image or video, missing key, wrong type, a value out of range, a sample over
the size limits) never stops training: the reader or decoder raises :class:`BadSample` with a reason, the pipeline
drops the sample, and a :class:`BadSampleCounter` counts it per reason and logs at a bounded rate (losses inside a
shard: one line per damaged shard, naming it). Counts travel to the main process inside each batch (under
``batch["_data"]["bad"]``, the worker's running totals) and are summed there by the DataModule; the
:class:`BadSampleLogger` callback logs them as ``data/bad_<reason>``. docs/data.md has the table of reasons.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import lightning as L

__all__ = ["BAD_REASONS", "BadSample", "BadSampleCounter", "BadSampleLogger", "Limits"]

log = logging.getLogger(__name__)

# every reason the pipelines use; counts are reported for all of them (zeros included) so a metric never appears
# half-way through a run. Tar-level reasons count lost samples (see grn.datamodules.wds.shard_samples):
#   truncated_tar   a shard cut short (or its compressed stream ends early): the sample being read is lost
#   corrupt_tar     a damaged header or garbage inside a shard, or a corrupt compressed stream: each sample lost
#   unreadable_tar  a shard that cannot be opened or holds no tar header at all
#   duplicate_key   a sample whose key the shard already had (the first one is kept)
# Sample-level reasons:
#   too_large       a tar member, an image (pixels, from its header) or a video frame over the limits (Limits)
#   aspect_ratio    an image or video frame whose long side is more than max_aspect_ratio times its short side
#   decode_image / decode_video   media that do not decode
#   missing_key     a required member or field is absent (or an empty caption)
#   wrong_type      a member or field of the wrong kind ("fps": "fast", a label "seven", damaged tokens)
#   bad_value       a field of the right type whose value is impossible (NaN/inf, negative, zero where positive,
#                   out of range, begin >= end)
#   too_short       a video shorter than the minimum training duration (filtered, as the official loader drops it)
#   missing_media   a jsonl line read directly (datamodules/jsonl.py) whose media file is missing or unreadable
BAD_REASONS = ("truncated_tar", "corrupt_tar", "unreadable_tar", "duplicate_key", "too_large", "aspect_ratio",
               "decode_image", "decode_video", "missing_key", "wrong_type", "bad_value", "too_short",
               "missing_media")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a sample may cost before it is decoded; larger ones are skipped and counted (``too_large`` /
    ``aspect_ratio``). Set through the data config (``data.max_member_bytes`` and so on).

    Attributes:
        max_member_bytes: bytes of one tar member (checked from its header; larger members are skipped unread).
        max_image_pixels: width x height of an image, from its header, before it is decoded.
        max_frame_pixels: width x height of a video frame, from the stream header and per decoded frame.
        max_aspect_ratio: long side / short side of an image or video frame.
    """

    max_member_bytes: int = 256 << 20
    max_image_pixels: int = 40_000_000
    max_frame_pixels: int = 4096 * 4096
    max_aspect_ratio: float = 10.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"data.{field.name} must be a positive number, got {value!r}")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"data.max_aspect_ratio must be >= 1 (long side / short side), got "
                             f"{self.max_aspect_ratio}")

    def check_size(self, width: int, height: int, what: str, max_pixels: int, name: str) -> None:
        """Raise ``too_large`` / ``aspect_ratio`` / ``bad_value`` for a ``width x height`` picture."""
        if width < 1 or height < 1:
            raise BadSample("bad_value", f"{what} of {width}x{height} pixels")
        if width * height > max_pixels:
            raise BadSample("too_large", f"{what} of {width}x{height} = {width * height} pixels > "
                                         f"data.{name}={max_pixels}")
        if max(width, height) > self.max_aspect_ratio * min(width, height):
            raise BadSample("aspect_ratio", f"{what} of {width}x{height}: aspect ratio "
                                            f"{max(width, height) / min(width, height):.1f} > "
                                            f"data.max_aspect_ratio={self.max_aspect_ratio}")


class BadSample(Exception):
    """Raised by a sample decoder: ``reason`` is one of :data:`BAD_REASONS`, ``detail`` says what was wrong."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in BAD_REASONS:
            raise ValueError(f"unknown bad-sample reason {reason!r}; expected one of {BAD_REASONS}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BadSampleCounter:
    """Counts bad samples per reason; logs the first of each reason, then at most once per ``log_every_s``.

    Args:
        log_every_s: minimum seconds between two log lines after the first one of a reason (bounded rate, so
            a corrupt shard cannot flood the log).
        where: a prefix for log lines (e.g. ``"rank 0 worker 1"``).
    """

    def __init__(self, log_every_s: float = 60.0, where: str = "") -> None:
        self.counts: dict[str, int] = {r: 0 for r in BAD_REASONS}
        self.log_every_s = float(log_every_s)
        self.where = where
        self._last_log = float("-inf")
        self._unlogged = 0
        self._shards_logged: set[str] = set()

    def add(self, reason: str, detail: str = "", shard: str | None = None) -> None:
        """Count one ``reason``. With ``shard`` (a loss inside that shard's tar), the shard's first loss is logged
        with its name, always, and its later ones are only counted."""
        self.counts[reason] += 1
        if shard is not None:
            self.shard_note(shard, f"{reason}: {detail}")
            return
        now = time.monotonic()
        if self.counts[reason] == 1 or now - self._last_log >= self.log_every_s:
            extra = f" (+{self._unlogged} more not logged)" if self._unlogged else ""
            log.warning("skipped bad sample [%s] %s: %s%s", self.where, reason, detail, extra)
            self._last_log = now
            self._unlogged = 0
        else:
            self._unlogged += 1

    def shard_note(self, shard: str, message: str) -> None:
        """Log ``message`` about ``shard`` unless this counter already logged that shard."""
        if shard not in self._shards_logged:
            self._shards_logged.add(shard)
            log.warning("shard losses [%s] %s: %s (later ones in this shard are counted, not logged)",
                        self.where, shard, message)

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    def load(self, counts: dict[str, int]) -> None:
        """Overwrite the running totals (resume: the totals at the restored data position)."""
        self.counts = {r: int(counts.get(r, 0)) for r in BAD_REASONS}


class BadSampleLogger(L.Callback):
    """Logs the DataModule's ``bad_samples`` totals as ``data/bad_<reason>`` after every training batch.

    Works with any DataModule that has a ``bad_samples`` dict (the shard DataModules do); others are ignored.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        counts = getattr(trainer.datamodule, "bad_samples", None)
        if not counts:
            return
        for reason, n in counts.items():
            # each rank counts its own samples; the sum over ranks is the run's total
            pl_module.log(f"data/bad_{reason}", float(n), on_step=True, on_epoch=False, reduce_fx="sum",
                          sync_dist=True)
