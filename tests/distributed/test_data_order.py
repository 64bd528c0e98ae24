"""ResumableSampler / make_resumable: the data order is a pure function of (seed, epoch), the single-process
order is the one of a seeded shuffling DataLoader, ranks split it, and a skip resumes mid-epoch."""

import torch
from torch.utils.data import DataLoader

from grn.distributed.data_order import ResumableSampler, make_resumable


def test_one_replica_matches_a_seeded_shuffling_loader_epoch_after_epoch():
    data = list(range(23))
    plain = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(7))
    resumable = make_resumable(DataLoader(data, batch_size=4, shuffle=True), seed=7)
    assert isinstance(resumable.sampler, ResumableSampler)
    for epoch in range(3):
        resumable.sampler.set_epoch(epoch)
        assert [b.tolist() for b in resumable] == [b.tolist() for b in plain]


def test_epochs_differ_and_replay_in_any_order():
    s = ResumableSampler(50, num_replicas=1, rank=0, seed=3)
    orders = {}
    for epoch in (0, 1, 2, 1, 0, 2):  # going back recomputes the same permutation
        s.set_epoch(epoch)
        order = list(s)
        assert orders.setdefault(epoch, order) == order
    assert orders[0] != orders[1] != orders[2] and sorted(orders[0]) == list(range(50))


def test_ranks_split_the_epoch_without_overlap():
    parts = []
    for rank in range(3):
        s = ResumableSampler(30, num_replicas=3, rank=rank, seed=1)
        s.set_epoch(4)
        parts.append(list(s))
    assert all(len(p) == 10 for p in parts)
    assert sorted(sum(parts, [])) == list(range(30))


def test_skip_applies_to_its_epoch_once():
    s = ResumableSampler(20, num_replicas=2, rank=1, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.skip(epoch=2, num_items=4)
    s.set_epoch(1)
    assert len(list(s)) == 10  # another epoch: untouched, and the skip still waits for its epoch
    s.set_epoch(2)
    assert list(s) == full[4:]
    assert list(s) == full  # a later pass over the same epoch is whole again


def test_loaders_that_cannot_be_rebuilt_are_left_alone():
    data = list(range(10))
    custom = DataLoader(data, batch_size=2, sampler=[9, 8, 7])
    assert make_resumable(custom, seed=0) is custom
    sampler = torch.utils.data.RandomSampler(data, replacement=True)
    with_replacement = DataLoader(data, batch_size=2, sampler=sampler)
    assert make_resumable(with_replacement, seed=0) is with_replacement
