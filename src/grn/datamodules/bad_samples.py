"""Skip-and-count handling of bad samples in shard pipelines.

A bad sample (truncated tar, undecodable image or video, missing key, wrong type) never stops training: the
decoder raises :class:`BadSample` with a reason, the pipeline drops the sample, and a :class:`BadSampleCounter`
counts it per reason and logs at a bounded rate. Counts travel to the main process inside each batch (under
``batch["_data"]["bad"]``, the worker's running totals) and are summed there by the DataModule; the
:class:`BadSampleLogger` callback logs them as ``data/bad_<reason>``.
"""

from __future__ import annotations

import logging
import time

import lightning as L

__all__ = ["BAD_REASONS", "BadSample", "BadSampleCounter", "BadSampleLogger"]

log = logging.getLogger(__name__)

# every reason the pipelines use; counts are reported for all of them (zeros included) so a metric never appears
# half-way through a run
# too_short: a video shorter than the minimum training duration (filtered, as the official loader drops it)
BAD_REASONS = ("truncated_tar", "decode_image", "decode_video", "missing_key", "wrong_type", "too_short")


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

    def add(self, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if self.counts[reason] == 1 or now - self._last_log >= self.log_every_s:
            extra = f" (+{self._unlogged} more not logged)" if self._unlogged else ""
            log.warning("skipped bad sample [%s] %s: %s%s", self.where, reason, detail, extra)
            self._last_log = now
            self._unlogged = 0
        else:
            self._unlogged += 1

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
