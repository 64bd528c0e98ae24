"""Two-pointer sequence packing under a token budget, as the official T2I/T2V loader forms its batches
(official_update §C9, ``dataset_joint_vi.py:form_batches``). Pure Python over example counts (no tokens).

It is an option beside :func:`grn.models.packing.pack_by_budget` (greedy in arrival order) with the same return
contract ``(rows, skipped)``, so a caller can use either.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pack_two_pointer"]


def pack_two_pointer(token_counts: Sequence[int], budget: int, dense_ratio: float | None = None
                     ) -> tuple[list[list[int]], list[int]]:
    """Pack examples into rows of at most ``budget`` tokens.

    Examples are sorted by token count, largest first. Each row takes, from the large end, every next example
    that still fits, then tops up from the small end while the smallest left still fits (two pointers). A row
    never exceeds ``budget``, and every kept example is in exactly one row.

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
        rows.append(row)
    return rows, skipped
