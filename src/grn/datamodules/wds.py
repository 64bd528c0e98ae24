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

Where the parts live: :mod:`~grn.datamodules.shard_lists` (patterns, seeds), :mod:`~grn.datamodules.tar_stream`
(tar bytes and damage events), :mod:`~grn.datamodules.shard_reader` (samples, loss counting),
:mod:`~grn.datamodules.batching`, :mod:`~grn.datamodules.shard_stream` (one rank's stream) and
:mod:`~grn.datamodules.shard_module` (the DataModule and its loader). This module re-exports them.
"""

from __future__ import annotations

from grn.datamodules.batching import Batcher, collate
from grn.datamodules.shard_lists import check_sources_readable, expand_shards, sample_rng, seed_of, source_urls
from grn.datamodules.shard_module import ResumableLoader, ShardDataModule
from grn.datamodules.shard_reader import shard_samples
from grn.datamodules.shard_stream import Decoder, ShardStream
from grn.datamodules.tar_stream import probe_shard

__all__ = [
    "Batcher",
    "Decoder",
    "ResumableLoader",
    "ShardDataModule",
    "ShardStream",
    "check_sources_readable",
    "collate",
    "expand_shards",
    "probe_shard",
    "sample_rng",
    "seed_of",
    "shard_samples",
    "source_urls",
]
