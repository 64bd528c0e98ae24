"""Exact resume: what a Lightning checkpoint lacks to continue as if the run had never stopped.

Lightning checkpoints hold weights, optimisers, schedulers and loop counters. :class:`ExactResume` adds the data
position (epoch and batches already consumed in it, so a :class:`~grn.distributed.data_order.ResumableSampler` or a
:class:`~grn.datamodules.seq_packing.PackedSampler` skips them) and every rank's RNG states (torch CPU/CUDA, numpy, Python), so the noise drawn after a resume is the noise
the uninterrupted run drew.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

from grn.datamodules.seq_packing import PackedSampler
from grn.distributed.data_order import ResumableSampler, make_resumable

log = logging.getLogger(__name__)

__all__ = ["ExactResume", "rng_state", "set_rng_state"]

KEY = "grn_resume"


def rng_state() -> dict[str, Any]:
    """This process's RNG states, as plain tensors/lists (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def _gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (one element outside a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


class ExactResume(L.Callback):
    """Saves and restores the data position and per-rank RNG states (checkpoint key ``grn_resume``).

    Use :meth:`wrap` on the DataModule so its map-style train loader gets a :class:`ResumableSampler` seeded
    with ``seed``; loaders that cannot be rebuilt (iterable datasets) are left alone and resume through their
    own ``state_dict``.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._pending: dict[str, Any] | None = None

    # ---- data -----------------------------------------------------------------------------------------------
    def wrap(self, datamodule: L.LightningDataModule) -> L.LightningDataModule:
        """Patch ``datamodule.train_dataloader`` (on the instance) to return a resumable loader."""
        original = datamodule.train_dataloader
        seed = int(getattr(datamodule, "seed", self.seed))

        def train_dataloader():
            return make_resumable(original(), seed)

        datamodule.train_dataloader = train_dataloader  # type: ignore[method-assign]
        return datamodule

    @staticmethod
    def _sampler(trainer: L.Trainer) -> ResumableSampler | PackedSampler | None:
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        return sampler if isinstance(sampler, (ResumableSampler, PackedSampler)) else None

    # ---- checkpoint hooks -----------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # runs on every rank (inside dump_checkpoint), so the gather is collective; rank 0 writes the file
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        checkpoint[KEY] = {
            "epoch": int(trainer.current_epoch),
            "batches": int(batches),
            "rng": _gather(rng_state()),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get(KEY)
        if self._pending is None:
            log.warning("checkpoint has no %s entry: data order and random draws will differ from an "
                        "uninterrupted run", KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        sampler = self._sampler(trainer)
        loader = trainer.train_dataloader
        if sampler is None:
            log.warning("the train loader has no ResumableSampler (iterable or custom loader): it restarts its "
                        "epoch unless it restores its own state_dict")
        else:
            # a PackedSampler's items are whole batches (packs; the loader's batch_size is None)
            sampler.skip(state["epoch"], state["batches"] * int(loader.batch_size or 1))
            # The iterator was created before this hook (Lightning's setup_data); with workers it has already
            # drawn indices, so it is rebuilt once the sampler knows its epoch and skip.
            sampler.set_epoch(state["epoch"])
            trainer.fit_loop._data_fetcher.setup(trainer.fit_loop._combined_loader)
            iter(trainer.fit_loop._data_fetcher)
        rngs = state["rng"]
        rank = trainer.global_rank
        if len(rngs) != trainer.world_size:
            log.warning("checkpoint written by %d ranks, resumed on %d: training continues, but not exactly as "
                        "the uninterrupted run (other data split; ranks beyond the saved ones take rank 0's RNG "
                        "state)", len(rngs), trainer.world_size)
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
