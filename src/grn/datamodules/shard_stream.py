"""One rank's batches from WebDataset shards: shard draws, raw shuffle, decode, batching and exact replay
(see :mod:`grn.datamodules.wds` for the guarantees)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from grn.datamodules.bad_samples import BadSample, BadSampleCounter, Limits
from grn.datamodules.batching import Batcher
from grn.datamodules.shard_lists import sample_rng, seed_of
from grn.datamodules.shard_reader import shard_samples

Decoder = Callable[[dict[str, Any], random.Random], dict[str, Any]]


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
        read_samples: ``read_samples(urls, counter, max_member_bytes)`` → raw samples of those urls, counting the
            lost ones (default :func:`~grn.datamodules.shard_reader.shard_samples`, tar shards;
            :class:`~grn.datamodules.jsonl.JsonlLines` reads jsonl files).

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
        read_samples: Callable[..., Iterator[dict[str, Any]]] | None = None,
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
        self.read_samples = read_samples or shard_samples
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
            rng = random.Random(seed_of(self.seed, self.epoch, self.rank, worker, 1))
            while True:  # endless; the batch count ends the epoch
                yield rng.choices(self.urls, weights=self.url_weights)[0]
        order = list(self.urls)
        # one permutation per epoch, identical on every rank and worker, then split by node, then by worker
        random.Random(seed_of(self.seed, self.epoch, 2)).shuffle(order)
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
        raw: Iterator[dict] = self.read_samples(self._shards(worker, num_workers), counter, self.max_member_bytes)
        if self.shuffle_buffer > 1:
            rng = random.Random(seed_of(self.seed, self.epoch, self.rank, worker, 3))
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

