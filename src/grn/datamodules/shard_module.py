"""The DataModule over WebDataset shards (:class:`ShardDataModule`) and its loader (:class:`ResumableLoader`):
position tracking for exact resume and bad-sample totals."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from grn.datamodules.bad_samples import BAD_REASONS, Limits
from grn.datamodules.batching import Batcher
from grn.datamodules.shard_lists import check_sources_readable, expand_shards
from grn.datamodules.shard_stream import Decoder, ShardStream

log = logging.getLogger(__name__)


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

    def raw_samples(self) -> Callable[..., Any] | None:
        """The reader of raw samples (see :class:`ShardStream`); None: tar shards."""
        return None

    def check_readable(self, shards: str | Sequence[str]) -> None:
        """Start-up check that every source of ``shards`` holds readable data (tar shards here)."""
        check_sources_readable(shards)

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
            read_samples=self.raw_samples(),
        )
        stream.check_shard_count(self.num_workers)
        self.check_readable(self.train_shards if train else self.val_shards)
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
