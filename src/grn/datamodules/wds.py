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
* **Bad samples** are skipped and counted (:mod:`grn.datamodules.bad_samples`).
* **Exact resume**: every batch carries ``batch["_data"]`` — the worker that made it, how many raw samples that
  worker had drawn, the samples still waiting in its batcher, its batch count and bad-sample totals. The DataModule
  (:class:`ShardDataModule`) records this for the batches the trainer actually consumed
  (``on_before_batch_transfer``, which also removes the key) and stores it in the checkpoint. On resume, each
  worker replays its raw stream — reading bytes, not decoding them — up to the stored position, and the worker
  ids are rotated so that the DataLoader's round-robin continues with the worker that was next. The batches after
  a restart are exactly those an uninterrupted run would have seen.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from grn.datamodules.bad_samples import BAD_REASONS, BadSample, BadSampleCounter

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


class _TailTracker:
    """A read-only file wrapper that remembers the last 1,024 bytes read (the tar end-of-archive blocks)."""

    def __init__(self, f) -> None:
        self.f, self.tail = f, b""

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if data:
            self.tail = (self.tail + data[-1024:])[-1024:]
        return data


def shard_samples(urls: Iterator[str], counter: BadSampleCounter) -> Iterator[dict[str, Any]]:
    """Samples ``{"__key__", "__url__", ext: bytes}`` of the shards in ``urls``, in file order.

    A shard that cannot be opened or read to its end-of-archive blocks counts once as ``truncated_tar``; its
    samples before the damage are kept, the one being read when it happened is dropped (it is incomplete).
    Python's ``tarfile`` takes a file cut at a header boundary for a normal end, so the end-of-archive blocks are
    checked explicitly.
    """
    for url in urls:
        current: dict[str, Any] | None = None
        try:
            with wds.gopen(url, "rb") as f:
                tracked = _TailTracker(f)
                with tarfile.open(fileobj=tracked, mode="r|*") as tar:
                    for member in tar:
                        match = _KEY_EXT.match(member.name)
                        if not member.isreg() or match is None or os.path.basename(member.name).startswith("."):
                            continue
                        data = tar.extractfile(member).read()
                        key, ext = match.group(1), match.group(2).lower()
                        if current is None or current["__key__"] != key:
                            if current is not None:
                                yield current
                            current = {"__key__": key, "__url__": url}
                        current[ext] = data
                    while tracked.read(1 << 16):  # drain the padding, so the tail is the file's end
                        pass
                if tracked.tail.count(0) < 1024:
                    raise tarfile.ReadError("no end-of-archive blocks (file cut short)")
        except (tarfile.TarError, OSError, EOFError) as err:
            counter.add("truncated_tar", f"{url}: {type(err).__name__}: {err}")
            current = None  # the sample being read is incomplete
        if current is not None:
            yield current


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
        raw: Iterator[dict] = shard_samples(self._shards(worker, num_workers), counter)
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
    ) -> None:
        super().__init__()
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
        """What decides a sample's pixels (for token-cache keys); subclasses add their settings."""
        return {"kind": type(self).__name__, "train": str(self.train_shards), "val": str(self.val_shards)}

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
        )
        stream.check_shard_count(self.num_workers)
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
