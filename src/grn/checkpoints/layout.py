"""The grn checkpoint format: which keys hold what.

A grn checkpoint (written by Lightning for a training run, by :func:`~grn.checkpoints.export_ema`, or by
converting an official file) is a dict::

    {"hyper_parameters": {"net": cfg} | {"tokenizer": cfg}, ...,   # plain configs, built by build_from_config
     "state_dict": {name: tensor},                                   # keys below, one prefix per sub-module
     EXPORT_KEY: {"ema": str | None},                                # only in exports: the weights are final
     ...}                                                            # optimisers, loops, RNG states (training)

``state_dict`` prefixes follow the Lightning modules' attribute names: a generator / T2I-T2V run keeps its network
under ``net.`` and each EMA under ``emas.<name>.`` (``ema1``, ``ema2``, ...); a tokenizer run keeps the tokenizer
under ``tokenizer.`` and its one EMA under ``ema.``. An EMA's entries are the buffers of
:class:`~grn.models.ema.EMA`: ``shadow__<param name, '.' -> '__'>`` (float32, one per floating-point parameter)
and ``num_updates``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from grn.models.ema import shadow_key

__all__ = [
    "EXPORT_KEY", "NET_PREFIX", "TOKENIZER_EMA_PREFIX", "TOKENIZER_PREFIX", "ema_prefix", "is_export", "load_ema",
    "prefixes", "strip_prefix",
]

EXPORT_KEY = "grn_export"  # present (with the EMA's name) in exported files: their weights are final
NET_PREFIX = "net."
TOKENIZER_PREFIX = "tokenizer."
TOKENIZER_EMA_PREFIX = "ema."


def ema_prefix(name: str) -> str:
    """The ``state_dict`` prefix of a generator / T2I-T2V run's EMA ``name`` (``ema1`` -> ``emas.ema1.``)."""
    return f"emas.{name}."


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` with it removed (``{"net.w": t, "ema.w": u}``, ``"net."`` -> ``{"w": t}``);
    other keys are dropped. The tensors are the same objects, not copies."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def is_export(ckpt: Mapping[str, Any]) -> bool:
    """True for a file whose weights are final (an export, or a converted release without EMAs): no EMA is
    applied when it is loaded."""
    return EXPORT_KEY in ckpt


def prefixes(hp: Mapping[str, Any], ema: str | None) -> tuple[str, str]:
    """``(network prefix, EMA prefix)`` of a checkpoint from its ``hyper_parameters``: a generator / T2I-T2V run
    (``net`` config; EMA ``ema``, default ``ema1``) or a tokenizer run (``tokenizer`` config; its one EMA)."""
    if "net" in hp:
        return NET_PREFIX, ema_prefix(ema or "ema1")
    if "tokenizer" in hp:
        return TOKENIZER_PREFIX, TOKENIZER_EMA_PREFIX
    raise ValueError("not a GRN training checkpoint: hyper_parameters has neither 'net' nor 'tokenizer'")


@torch.no_grad()
def load_ema(module: nn.Module, state: Mapping[str, torch.Tensor], prefix: str, source: Any, name: str) -> None:
    """Write the EMA stored in ``state`` under ``prefix`` into ``module``'s parameters, in place (each cast to the
    parameter's dtype). Every floating-point parameter must have its shadow, of its shape, and no other shadow may
    be there, as a strict load of :class:`~grn.models.ema.EMA` asks; ``source`` and ``name`` name the file and the
    EMA in errors.

    No EMA object is built: that would clone every parameter once more, a second copy of a multi-GB network."""
    shadows = strip_prefix(state, prefix)
    if not shadows:
        raise KeyError(f"checkpoint {source} has no EMA named {name!r}")
    params = {n: p for n, p in module.named_parameters() if p.dtype.is_floating_point}
    wanted = {shadow_key(n): n for n in params}
    missing = sorted(set(wanted) - set(shadows))
    extra = sorted(set(shadows) - set(wanted) - {"num_updates"})
    if missing or extra:
        what = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        what += [f"{len(extra)} unexpected (e.g. {extra[0]})"] if extra else []
        raise KeyError(f"checkpoint {source}: the EMA {name!r} does not fit the network: {', '.join(what)} entries")
    wrong = sorted(k for k, n in wanted.items() if shadows[k].shape != params[n].shape)
    if wrong:  # copy_ would broadcast a wrong shape silently
        k = wrong[0]
        raise KeyError(f"checkpoint {source}: the EMA {name!r} does not fit the network: {k} has shape "
                       f"{tuple(shadows[k].shape)}, the parameter {tuple(params[wanted[k]].shape)}")
    for key, param_name in wanted.items():
        params[param_name].copy_(shadows[key].to(params[param_name].dtype))
