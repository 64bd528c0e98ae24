"""One loading policy for every official release file: it loads directly where a grn checkpoint does, and
converting it into a grn checkpoint (``scripts/convert_official.py``) is optional.

Each model family has one adapter (the torchtitan state-dict-adapter idea) that knows its release format:

* ``c2i``: ``GRN_ind_B_ep599.pth`` & co. (:mod:`grn.checkpoints.official_c2i`), loaded by ``load_generator``;
* ``tokenizer``: ``HBQ_*_tokenizer_*.ckpt`` (:mod:`grn.checkpoints.official_tokenizer`), by ``load_tokenizer``;
* ``t2iv``: ``GRN_T2I_2B.pth`` / ``GRN_T2V_2B.pth`` (:mod:`grn.checkpoints.official_t2iv`), by ``load_t2iv``.

An adapter works on the dict that :func:`~grn.checkpoints.read_checkpoint` returned (memory-mapped), so a file is
read once whichever way it is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from grn.checkpoints.adapter import OfficialAdapter

__all__ = ["OfficialAdapter", "official_adapter", "official_adapters"]


@cache
def official_adapters() -> dict[str, OfficialAdapter]:
    """``family -> adapter`` for every family (imported on first use: each pulls in its network's module)."""
    from grn.checkpoints import official_c2i, official_t2iv, official_tokenizer

    return {a.family: a for a in (official_c2i.ADAPTER, official_tokenizer.ADAPTER, official_t2iv.ADAPTER)}


def official_adapter(ckpt: Any) -> OfficialAdapter | None:
    """The adapter of the family whose release format ``ckpt`` (a loaded file) has, or None: a grn checkpoint
    (it has ``hyper_parameters``) or anything else."""
    if not isinstance(ckpt, Mapping) or "hyper_parameters" in ckpt:
        return None
    return next((a for a in official_adapters().values() if a.matches(ckpt)), None)
