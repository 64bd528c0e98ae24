"""Two-pointer packing (official_update §C9): never over the budget, every kept example exactly once, the dense cap,
the packs of the released loop; the sampler (epochs, ranks, resume), the stream batcher and the packed batch."""

from __future__ import annotations

import random

import pytest
import torch

from grn.datamodules.seq_packing import PackedSampler, PackingBatcher, collate_packed, pack_two_pointer


def test_rows_fill_from_the_large_end_then_top_up_from_the_small_end():
    rows, skipped = pack_two_pointer([7, 1, 5, 2, 9, 3], budget=10)
    # sorted: 9(4) 7(0) 5(2) 3(5) 2(3) 1(1); row 1: 9, then 1 from the small end; row 2: 7, then 2 (3 > 1 left)...
    assert rows == [[4, 1], [0, 3], [2, 5]] and skipped == []


@pytest.mark.parametrize("seed", range(20))
def test_never_over_budget_and_every_kept_example_once(seed):
    rng = random.Random(seed)
    budget = rng.choice([16, 100, 4096])
    counts = [rng.randint(0, int(budget * 1.3)) for _ in range(rng.randint(0, 200))]
    ratio = rng.choice([None, 0.4, 1.0])
    rows, skipped = pack_two_pointer(counts, budget, ratio)
    cap = budget * (ratio or 1.0)
    assert all(sum(counts[i] for i in row) <= budget for row in rows)
    assert all(row for row in rows)
    kept = sorted(i for row in rows for i in row)
    assert kept == sorted(i for i, n in enumerate(counts) if n <= cap)  # exactly once each
    assert skipped == [i for i, n in enumerate(counts) if n > cap]


def test_the_dense_cap_drops_long_examples():
    rows, skipped = pack_two_pointer([16384, 16385, 100, 40960, 40961], budget=40960, dense_ratio=0.4)
    assert skipped == [1, 3, 4] and rows == [[0, 2]]  # 40960 * 0.4 = 16384 is kept, 16385 is not
    with pytest.raises(ValueError):
        pack_two_pointer([1], budget=0)
    with pytest.raises(ValueError):
        pack_two_pointer([1], budget=4, dense_ratio=1.5)


# ----------------------------------------------------------------------------- against the released loop (§C9)
def official_form_batches(counts, budget, dense_ratio):
    """A plain restatement of the released ``dataset_joint_vi.py`` packing (``append_text_tokens`` drops examples
    over ``budget · dense_ratio``; ``form_batches`` sorts by -tokens, fills each batch from the large end while
    ``tokens_remain - x >= 0``, tops it up from the small end, and orders each batch by -tokens)."""
    examples = [(i, n) for i, n in enumerate(counts) if n <= budget * dense_ratio]
    examples = sorted(examples, key=lambda x: -x[1])
    batches = []
    left_ptr, right_ptr = 0, len(examples) - 1
    while left_ptr <= right_ptr:
        tokens_remain = budget
        tmp_batch = []
        while left_ptr <= right_ptr and tokens_remain - examples[left_ptr][1] >= 0:
            tokens_remain -= examples[left_ptr][1]
            tmp_batch.append((left_ptr, examples[left_ptr][1]))
            left_ptr += 1
        while left_ptr <= right_ptr and tokens_remain - examples[right_ptr][1] >= 0:
            tokens_remain -= examples[right_ptr][1]
            tmp_batch.append((right_ptr, examples[right_ptr][1]))
            right_ptr -= 1
        if tmp_batch:
            tmp_batch = sorted(tmp_batch, key=lambda x: -x[1])
            batches.append([examples[ptr][0] for ptr, _ in tmp_batch])
    return batches


@pytest.mark.parametrize("seed", range(10))
def test_packs_equal_the_released_loop_on_a_seeded_length_list(seed):
    rng = random.Random(100 + seed)
    budget = rng.choice([40960, 4096, 300])
    # text + visual counts as the released data has them: many equal sizes (one bucket), some long clips
    sizes = [rng.choice([1601, 3201, 6401]) + rng.randint(5, 512) for _ in range(300)] if budget == 40960 else \
        [rng.randint(1, budget // 2) for _ in range(rng.randint(1, 300))]
    rows, skipped = pack_two_pointer(sizes, budget, 0.4)
    assert rows == official_form_batches(sizes, budget, 0.4)
    assert skipped == [i for i, n in enumerate(sizes) if n > budget * 0.4]


# ----------------------------------------------------------------------------- PackedSampler / PackingBatcher
def _counts(n=200, seed=0):
    rng = random.Random(seed)
    return [rng.choice([33, 34, 58, 60, 61]) for _ in range(n)]  # images and clips of a few caption lengths


def test_packed_sampler_epochs_ranks_and_skip():
    counts = _counts()
    ranks = [PackedSampler(counts, 400, 0.4, num_replicas=2, rank=r, seed=3) for r in range(2)]
    for epoch in (0, 1):
        for s in ranks:
            s.set_epoch(epoch)
        packs = ranks[0].packs(epoch)
        assert packs == ranks[1].packs(epoch)  # one global packing, the same on every rank
        assert sorted(i for p in packs for i in p) == list(range(len(counts)))  # every example once
        assert all(sum(counts[i] for i in p) <= 400 for p in packs)
        # each pack is a two-pointer pack of the epoch's order: the released loop on those examples
        assert all(p == sorted(p, key=lambda i: -counts[i]) for p in packs)
        mine = [list(s) for s in ranks]
        assert len(mine[0]) == len(mine[1]) == len(packs) // 2 == len(ranks[0])  # equal step counts per rank
        assert mine[0] + mine[1] and not {tuple(p) for p in mine[0]} & {tuple(p) for p in mine[1]}
    assert ranks[0].packs(0) != ranks[0].packs(1)  # equal sizes pack differently every epoch, in a new order
    again = PackedSampler(counts, 400, 0.4, num_replicas=2, rank=0, seed=3)
    assert again.packs(1) == ranks[0].packs(1)  # a pure function of (seed, epoch)
    again.set_epoch(1)
    full = list(again)
    again.skip(1, 3)
    assert list(again) == full[3:] and list(again) == full  # the skip shortens the interrupted epoch only
    # validation: no shuffling, the packing of the examples in order
    val = PackedSampler(counts, 400, 0.4, shuffle=False)
    assert list(val) == pack_two_pointer(counts, 400, 0.4)[0]
    with pytest.raises(ValueError, match="over the packing cap"):
        PackedSampler([500, 600], 1000, 0.4)


def test_packing_batcher_packs_windows_and_keeps_them_pending():
    counts = _counts(25, seed=1)
    batcher = PackingBatcher(400, 0.4, window=10, count=lambda s: s["n"])
    out = []
    for i, n in enumerate(counts):
        got = batcher.add(i, {"n": n, "i": i, "bucket": (n,)})
        assert batcher.pending() == list(range(i - i % 10, i + 1)) if not got else batcher.pending() == []
        out.append(got)
    out.append(batcher.flush())
    windows = [list(range(0, 10)), list(range(10, 20)), list(range(20, 25))]
    got = [b for batches in out for b in batches]
    want = [[w[j] for j in row] for w in windows for row in pack_two_pointer([counts[i] for i in w], 400, 0.4)[0]]
    assert [[s["i"] for s in b] for b in got] == want
    assert all("bucket" not in s for b in got for s in b)


def test_collate_packed_keeps_every_shape():
    samples = [{"tokens": torch.zeros(2, 4, 4, dtype=torch.long), "caption": "<T2I>a", "label": torch.tensor(1)},
               {"tokens": torch.ones(2, 3, 4, 4, dtype=torch.long), "caption": "<T2V>b", "label": torch.tensor(2),
                "direction": torch.tensor(0)}]
    batch = collate_packed(samples)
    assert [t.shape for t in batch["tokens"]] == [(2, 4, 4), (2, 3, 4, 4)] and batch["rows"] == [[0, 1]]
    assert batch["caption"] == ["<T2I>a", "<T2V>b"] and batch["label"].tolist() == [1, 2]
    assert "direction" not in batch  # not in every sample
    with_text = collate_packed([{**s, "text": torch.ones(n, 3)} for s, n in zip(samples, (2, 5))],
                               null_text=torch.zeros(1, 3))
    assert with_text["text"].shape == (2, 5, 3) and with_text["text_lens"].tolist() == [2, 5]
    assert with_text["null_text"].shape == (1, 3)
