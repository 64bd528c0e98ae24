"""Two-pointer sequence packing under a token budget, as the official T2I/T2V loader forms its batches
(official_update §C9, ``dataset_joint_vi.py:form_batches``), and the data-path pieces that use it.

* :func:`pack_two_pointer` — the packing itself, pure Python over example counts (no tokens). It is an option
  beside :func:`grn.models.packing.pack_by_budget` (greedy in arrival order) with the same return contract
  ``(rows, skipped)``.
* :class:`PackedSampler` — for map-style (in-memory) sets: every epoch, the packs of the whole set (ties in size
  broken by a seeded shuffle, as the official shuffles its examples before the stable sort), shuffled, split over
  ranks with the same count on every rank (the official all-reduces the count to the minimum), resumable mid-epoch.
  Its items are packs (lists of indices); :class:`PackedView` turns one into a packed batch.
* :class:`PackingBatcher` — for shard streams: packs each window of ``window`` decoded samples.

A packed batch (:func:`collate_packed`) is what :class:`grn.lit_modules.t2iv.T2IVLitModule` trains on:
``{"tokens": list of S int64 [d, (T,) h, w], "rows": [[0, ..., S-1]], "caption": list of S str}`` (or text
features, padded ``"text"`` [S, L, D] with ``"text_lens"`` and ``"null_text"``): one row, one packed sequence,
as the official trainer's batch (batch dimension 1).

A sample's token count is the official one: visual tokens T·h·w + 1 pt token + caption tokens (clipped to the
text encoder's ``max_length``, official ``tlen``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, DistributedSampler

from grn.datamodules.batching import Batcher, collate
from grn.datamodules.shard_lists import seed_of

log = logging.getLogger(__name__)

__all__ = ["PackedSampler", "PackedView", "PackingBatcher", "collate_packed", "pack_two_pointer", "sample_tokens"]


def pack_two_pointer(token_counts: Sequence[int], budget: int, dense_ratio: float | None = None
                     ) -> tuple[list[list[int]], list[int]]:
    """Pack examples into rows of at most ``budget`` tokens.

    Examples are sorted by token count, largest first (a stable sort: equal counts keep their order). Each row
    takes, from the large end, every next example that still fits, then tops up from the small end while the
    smallest left still fits (two pointers). A row never exceeds ``budget``, and every kept example is in exactly
    one row. Each row is then ordered largest first (stable), as the official ``tmp_batch``.

    Args:
        token_counts: tokens per example (text + visual, as the caller counts them), ``N`` non-negative ints.
        budget: tokens per row (official ``train_max_token_len``).
        dense_ratio: examples longer than ``budget · dense_ratio`` are dropped (official
            ``dense_ratio4seqpack``, 0.4 in the released script); None keeps everything up to ``budget``.

    Returns:
        ``rows``: lists of example indices (into ``token_counts``), in packing order; ``skipped``: indices of the
        examples dropped (over ``budget`` or over the dense cap), ascending, for the caller to count.
    """
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}")
    if dense_ratio is not None and not 0 < dense_ratio <= 1:
        raise ValueError(f"dense_ratio must be in (0, 1], got {dense_ratio}")
    cap = budget if dense_ratio is None else budget * dense_ratio
    counts = [int(n) for n in token_counts]
    if any(n < 0 for n in counts):
        raise ValueError("token counts must be >= 0")
    skipped = [i for i, n in enumerate(counts) if n > cap]
    order = sorted((i for i, n in enumerate(counts) if n <= cap), key=lambda i: (-counts[i], i))
    rows: list[list[int]] = []
    lo, hi = 0, len(order) - 1
    while lo <= hi:
        row, left = [], budget
        while lo <= hi and counts[order[lo]] <= left:  # the largest that still fit
            left -= counts[order[lo]]
            row.append(order[lo])
            lo += 1
        while lo <= hi and counts[order[hi]] <= left:  # top up from the smallest end
            left -= counts[order[hi]]
            row.append(order[hi])
            hi -= 1
        rows.append(sorted(row, key=lambda i: -counts[i]))  # stable: the official row order
    return rows, skipped


def sample_tokens(tokens: torch.Tensor, text_len: int) -> int:
    """The packing count of one sample: visual tokens of index labels ``[d, (T,) h, w]`` + 1 pt token + text."""
    return int(tokens[0].numel()) + 1 + int(text_len)


class PackedSampler(DistributedSampler):
    """Packs of one rank for one epoch, for a map-style set with known token counts.

    Epoch ``e``'s packs are a pure function of ``(seed, e)``: the examples are permuted (so equal counts pack
    differently every epoch), packed with :func:`pack_two_pointer`, and the packs shuffled — all on one seeded
    generator, identical on every rank. Rank r then takes packs ``r, r + R, ...`` of the first ``R·⌊P/R⌋``, so
    every rank runs the same number of steps. With ``shuffle=False`` (validation) the examples keep their order
    and so do the packs.

    Args:
        token_counts: the packing count of each example (:func:`sample_tokens`).
        budget, dense_ratio: as :func:`pack_two_pointer`.
        num_replicas, rank: the data-parallel world (default: the process group, else 1 and 0).
        shuffle, seed: the order.

    ``skip(epoch, num_packs)`` makes the next iteration of ``epoch`` start after its first ``num_packs`` packs of
    this rank (what an interrupted run already trained on, :class:`grn.distributed.resume.ExactResume`).
    """

    def __init__(self, token_counts: Sequence[int], budget: int, dense_ratio: float | None = None,
                 num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True,
                 seed: int = 0) -> None:
        counts = [int(n) for n in token_counts]
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        super().__init__(range(len(counts)), num_replicas, rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.counts, self.budget, self.dense_ratio = counts, int(budget), dense_ratio
        self._skip_epoch: int | None = None
        self._skip_items = 0
        self._cache: tuple[int, list[list[int]]] | None = None
        _, skipped = pack_two_pointer(counts, self.budget, dense_ratio)
        self.dropped = len(skipped)
        if self.dropped:
            log.info("sequence packing: %d of %d examples are over the cap of %g tokens and are left out",
                     self.dropped, len(counts), self.budget * (dense_ratio or 1.0))
        if self.dropped == len(counts):
            raise ValueError(f"every example is over the packing cap ({self.budget} tokens x dense_ratio "
                             f"{dense_ratio}): raise the budget")

    def packs(self, epoch: int) -> list[list[int]]:
        """Every pack of ``epoch`` (all ranks), in order: lists of example indices."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = len(self.counts)
        if self.shuffle:
            rng = np.random.default_rng(seed_of(self.seed, epoch, 9))
            order = rng.permutation(n).tolist()
        else:
            rng, order = None, list(range(n))
        rows, _ = pack_two_pointer([self.counts[i] for i in order], self.budget, self.dense_ratio)
        packs = [[order[i] for i in row] for row in rows]
        if rng is not None:
            packs = [packs[i] for i in rng.permutation(len(packs)).tolist()]
        self._cache = (epoch, packs)
        return packs

    def skip(self, epoch: int, num_items: int) -> None:
        self._skip_epoch, self._skip_items = int(epoch), max(int(num_items), 0)

    def _mine(self, epoch: int) -> list[list[int]]:
        packs = self.packs(epoch)
        per_rank = len(packs) // self.num_replicas
        return packs[self.rank : per_rank * self.num_replicas : self.num_replicas]

    def __len__(self) -> int:
        return len(self._mine(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        mine = self._mine(self.epoch)
        if self._skip_epoch == self.epoch and self._skip_items:
            mine = mine[self._skip_items :]
            self._skip_epoch, self._skip_items = None, 0  # only the interrupted epoch is shortened
        return iter(mine)


def collate_packed(samples: list[dict[str, Any]], null_text: torch.Tensor | None = None) -> dict[str, Any]:
    """One packed batch (one row) from samples with ``tokens`` ``[d, (T,) h, w]`` of any shapes, a ``caption``
    string each, and optionally cached ``text`` features ``[L_i, D]`` (then padded to ``[S, L, D]`` with
    ``text_lens``, and ``null_text`` — the empty caption's features — added where given). Other fields that are
    present in every sample and stack (labels) are stacked; the rest stay lists."""
    out: dict[str, Any] = {"tokens": [s["tokens"] for s in samples], "rows": [list(range(len(samples)))]}
    if all("text" in s for s in samples):
        texts = [s["text"] for s in samples]
        out["text"] = pad_sequence(texts, batch_first=True)
        out["text_lens"] = torch.tensor([t.shape[0] for t in texts], dtype=torch.int64)
        if null_text is not None:
            out["null_text"] = null_text
    rest = {k for k in samples[0] if k not in ("tokens", "text")}
    for key in sorted(k for k in rest if all(k in s for s in samples)):
        values = [s[key] for s in samples]
        try:
            out[key] = collate(values) if not isinstance(values[0], str) else values
        except (RuntimeError, TypeError):
            out[key] = values
    return out


class PackedView(Dataset):
    """Item ``[i, j, ...]`` (a pack of :class:`PackedSampler`) of ``dataset`` as one packed batch
    (:func:`collate_packed`); use with ``DataLoader(view, sampler=packed_sampler, batch_size=None)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, pack: Sequence[int]) -> dict[str, Any]:
        return collate_packed([self.dataset[int(i)] for i in pack])


class PackingBatcher(Batcher):
    """Packs for shard streams (:class:`~grn.datamodules.shard_stream.ShardStream`): decoded samples are held
    until ``window`` of them are waiting, then packed with :func:`pack_two_pointer`; every pack is one batch.

    The official trainer packs the examples of a whole epoch at once; a stream can only pack what it has read,
    so the packs come from windows of ``window`` samples (the last, partial window is packed too unless
    ``drop_last``). Samples over the cap are dropped and counted (``dropped``). ``pending`` lists the samples
    waiting in the window, so an exact resume refills it (see :mod:`grn.datamodules.wds`).

    Args:
        budget, dense_ratio: as :func:`pack_two_pointer`.
        window: samples per packing window.
        count: a sample's packing count (default: :func:`sample_tokens` of its ``tokens`` and ``text`` rows).
        null_text: the empty caption's features, added to every batch (text token caches).
    """

    def __init__(self, budget: int, dense_ratio: float | None = None, window: int = 256, drop_last: bool = False,
                 count: Callable[[dict], int] | None = None, null_text: torch.Tensor | None = None) -> None:
        super().__init__(max(int(window), 1), drop_last)
        self.budget, self.dense_ratio = int(budget), dense_ratio
        self.count = count or (lambda s: sample_tokens(s["tokens"], s["text"].shape[0] if "text" in s else 0))
        self.null_text = null_text
        self.dropped = 0

    def _pack(self) -> list[list[dict]]:
        items, self._buf = self._buf, []
        rows, skipped = pack_two_pointer([self.count(s) for _, s in items], self.budget, self.dense_ratio)
        self.dropped += len(skipped)
        return [[items[i][1] for i in row] for row in rows]

    def add(self, index: int, sample: dict) -> list[list[dict]]:
        sample.pop("bucket", None)  # packs mix shapes
        self._buf.append((index, sample))
        return self._pack() if len(self._buf) >= self.batch_size else []

    def flush(self) -> list[list[dict]]:
        if self.drop_last:
            self._buf = []
            return []
        return self._pack() if self._buf else []

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_packed(samples, self.null_text)
