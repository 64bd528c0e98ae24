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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from torch import nn

__all__ = ["OfficialAdapter", "official_adapter", "official_adapters"]


@dataclass(frozen=True)
class OfficialAdapter:
    """What grn knows about one family's release files.

    Attributes:
        family: ``c2i``, ``tokenizer`` or ``t2iv``.
        kind: the registry kind of the network it yields (``generator``, ``tokenizer``, ``t2iv``): the loader
            that accepts these files.
        matches: ``matches(ckpt)``: whether a loaded file (a dict that is not a grn checkpoint) is of this family.
        load: ``load(ckpt, source, ema="ema1", **options) -> (module in eval mode on the CPU, hyper_parameters)``:
            the network built from the file's weights, with the ``hyper_parameters`` its conversion would store.
        to_checkpoint: ``to_checkpoint(ckpt, source, **options) -> dict``: the file as a grn checkpoint
            (:mod:`grn.checkpoints.layout`), tensors shared with ``ckpt`` where their dtype is already right.
    """

    family: str
    kind: str
    matches: Callable[[Mapping[str, Any]], bool]
    load: Callable[..., tuple[nn.Module, dict[str, Any]]]
    to_checkpoint: Callable[..., dict[str, Any]]


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
