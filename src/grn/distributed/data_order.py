"""A deterministic, rank-aware, fast-forwardable sampler for map-style training sets.

Exact resume needs the resumed run to see the batches the uninterrupted run would have seen. Lightning restores
the loops but restarts a plain ``DataLoader`` at the beginning of its epoch; :class:`ResumableSampler` instead
derives each epoch's order from ``(seed, epoch)`` only, and can skip the part of an epoch that was already
trained on. :func:`make_resumable` swaps it into an existing loader.

With one replica the order is exactly that of ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
(the draws per epoch of that generator are mirrored: the iterator's base seed, the permutation, and
the empty tail slice ``RandomSampler`` draws at the end of each pass), so
single-process runs keep the data order they had before resuming was made exact.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

log = logging.getLogger(__name__)

__all__ = ["ResumableSampler", "make_resumable"]


class ResumableSampler(DistributedSampler):
    """Indices of one rank for one epoch; epoch ``e``'s global order is a pure function of ``(seed, e)``.

    The global permutation is split the ``DistributedSampler`` way (rank ``r`` takes items ``r, r + R, ...``;
    padded by wrapping around, or trimmed with ``drop_last``), so every rank yields the same number of indices.

    Args:
        dataset_len: number of items ``N`` in the dataset.
        num_replicas, rank: data-parallel world; default: the initialised process group, else 1 and 0.
        shuffle: random order per epoch (else dataset order).
        seed: seed of the order.
        drop_last: trim the tail so that ``N`` divides evenly over ranks (else pad).

    ``skip(epoch, num_items)`` makes the next iteration of ``epoch`` start after its first ``num_items``
    indices of this rank (the items an interrupted run already consumed); other epochs are unaffected.
    """

    def __init__(
        self,
        dataset_len: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        # DistributedSampler only reads len(dataset): a range stands in for the data
        super().__init__(range(dataset_len), num_replicas, rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self._skip_epoch: int | None = None
        self._skip_items = 0
        self._gen: torch.Generator | None = None  # advanced one randperm per epoch
        self._gen_epoch = -1

    def skip(self, epoch: int, num_items: int) -> None:
        self._skip_epoch, self._skip_items = int(epoch), max(int(num_items), 0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        """Global order ``int64 [N]`` of ``epoch``: the ``epoch``-th randperm of a generator seeded once."""
        n = len(self.dataset)
        if self._gen is None or epoch <= self._gen_epoch:
            self._gen, self._gen_epoch = torch.Generator().manual_seed(self.seed), -1
        perm = None
        while self._gen_epoch < epoch:  # one randperm per epoch, so a resumed epoch e costs e draws once
            # a DataLoader iterator first draws its workers' base seed from the same generator: mirrored, so the
            # order is that of DataLoader(shuffle=True, generator=...)
            torch.empty((), dtype=torch.int64).random_(generator=self._gen)
            perm = torch.randperm(n, generator=self._gen)
            torch.randperm(n, generator=self._gen)  # RandomSampler's (empty) tail slice draws one more
            self._gen_epoch += 1
        self._last_perm = perm if perm is not None else self._last_perm
        return self._last_perm

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        order = self._permutation(self.epoch) if self.shuffle else torch.arange(n)
        if self.drop_last:
            order = order[: self.total_size]
        elif self.total_size > n:  # pad by wrapping so every rank gets num_samples items
            reps = -(-self.total_size // n)
            order = order.repeat(reps)[: self.total_size]
        mine = order[self.rank : self.total_size : self.num_replicas]
        if self._skip_epoch == self.epoch and self._skip_items:
            mine = mine[self._skip_items :]
            self._skip_epoch, self._skip_items = None, 0  # only the interrupted epoch is shortened
        return iter(mine.tolist())


def make_resumable(loader: DataLoader, seed: int) -> DataLoader:
    """The same loader with a :class:`ResumableSampler` (shuffling as before), or ``loader`` unchanged where it
    cannot be rebuilt safely (iterable datasets, custom samplers or loader subclasses: those resume through their
    own ``state_dict``). The rebuilt loader gets its own seeded generator, so creating its iterator never draws
    from the global RNG (which would make a resumed run's random stream differ from an uninterrupted one)."""
    if type(loader) is not DataLoader or not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        return loader
    if isinstance(loader.sampler, RandomSampler) and (
        loader.sampler.replacement or loader.sampler._num_samples is not None
    ):
        return loader
    sampler = ResumableSampler(
        len(loader.dataset), shuffle=isinstance(loader.sampler, RandomSampler), seed=seed, drop_last=False
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
        generator=torch.Generator().manual_seed(seed),
    )
