"""Two-pointer packing (official_update §C9): never over the budget, every kept example exactly once, the dense cap."""

from __future__ import annotations

import random

import pytest

from grn.datamodules.seq_packing import pack_two_pointer


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
