"""The adapter type of an official model family (:mod:`grn.checkpoints.official` holds the registry; each
``official_<family>.py`` defines one), apart from the registry so that the families and the registry do not import
each other."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["OfficialAdapter"]


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
