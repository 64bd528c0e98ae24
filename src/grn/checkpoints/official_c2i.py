"""Official C2I checkpoints -> this project's :class:`~grn.models.generator.GRN` (the ``c2i`` adapter).

A release file (``GRN_ind_B_ep599.pth`` and the like, facts §3.4, §7) is a dict with ``model``, ``model_ema1``,
``model_ema2`` (each the state dict of the official ``Denoiser`` wrapper, keys prefixed ``net.``), ``epoch`` and
optionally ``optimizer``. The network's parameter names and shapes are the official ones, so a weight set is a
prefix strip plus a strict load. :func:`load_generator <grn.checkpoints.load_generator>` takes the file directly
(``ema=None`` / ``ema1`` / ``ema2`` pick ``model`` / ``model_ema1`` / ``model_ema2``); :func:`c2i_checkpoint`
repackages all three weight sets into a grn checkpoint (``scripts/convert_official.py``). Either reads the file
once, memory-mapped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from grn.checkpoints.build import read_checkpoint
from grn.checkpoints.layout import NET_PREFIX, ema_prefix, strip_prefix
from grn.checkpoints.adapter import OfficialAdapter
from grn.models.ema import shadow_key
from grn.models.generator import GENERATOR_SIZES, GRN, build_generator

__all__ = ["ADAPTER", "OFFICIAL_C2I_KEYS", "c2i_checkpoint", "infer_c2i_config", "load_official_c2i",
           "read_official_c2i"]

OFFICIAL_C2I_KEYS = ("model", "model_ema1", "model_ema2")
OFFICIAL_EMA_DECAYS = [0.9999, 0.9996]  # of model_ema1, model_ema2 (facts §3.4)


def infer_c2i_config(state: dict[str, torch.Tensor], hbq_rounds: int = 4, target: str = "index") -> dict[str, Any]:
    """Size and shape of an official C2I network from its (prefix-stripped) state dict.

    The input width is K·C — 2^M·d for GRN_ind, 2·M·d for GRN_bit — so the target cannot be read off the
    weights (GRN_ind d=8 and GRN_bit d=16 are both 128 wide at M=4) and is given (the released model: index).
    """
    hidden = state["pos_embed"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    size = next((n for n, s in GENERATOR_SIZES.items() if s.hidden_size == hidden and s.depth == depth), None)
    if size is None:
        raise ValueError(f"no registered generator size has depth {depth} and width {hidden}")
    in_channels = state["x_embedder.proj1.weight"].shape[1]
    if state["final_layer.linear.weight"].shape[0] != in_channels:
        raise ValueError("head width differs from the input width: not a GRN C2I network")
    per_channel = 2**hbq_rounds if target == "index" else 2 * hbq_rounds
    if in_channels % per_channel:
        raise ValueError(f"input width {in_channels} does not fit target={target} with hbq_rounds={hbq_rounds}")
    return {
        "_target_": "grn.models.generator.build_generator",
        "size": size,
        "latent_dim": in_channels // per_channel,
        "hbq_rounds": hbq_rounds,
        "target": target,
        "num_classes": state["y_embedder.embedding_table.weight"].shape[0] - 1,
        "input_size": int(round(state["pos_embed"].shape[1] ** 0.5)),
    }


def read_official_c2i(path: str | Path) -> dict[str, Any]:
    """The dict in an official C2I file (``model``, ``model_ema1``, ... each ``{"net.<name>": tensor}``), read
    once on the CPU, memory-mapped with ``weights_only=True``: a weight set costs nothing until it is used."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    return read_checkpoint(path, mmap=True)


def _weight_set(ckpt: Mapping[str, Any], which: str, source: Any) -> dict[str, torch.Tensor]:
    """The network state dict of weight set ``which``, the official ``net.`` prefix stripped."""
    if which not in ckpt:
        raise KeyError(f"{source} has no {which!r} (keys: {sorted(ckpt)})")
    return strip_prefix(ckpt[which], NET_PREFIX)


def _hyper_parameters(cfg: dict[str, Any], tokenizer_ckpt: str | None) -> dict[str, Any]:
    return {"net": cfg, "tokenizer_ckpt": tokenizer_ckpt, "ema_decays": list(OFFICIAL_EMA_DECAYS)}


def _build(ckpt: Mapping[str, Any], which: str, source: Any, hbq_rounds: int, target: str) -> tuple[GRN, dict]:
    """``(our network holding weight set which, in eval mode, its _target_ config)``; a strict load."""
    state = _weight_set(ckpt, which, source)
    cfg = infer_c2i_config(state, hbq_rounds, target)
    # built for real, not on the meta device: GRN's RoPE tables are non-persistent buffers made in __init__
    net = build_generator(**{k: v for k, v in cfg.items() if k != "_target_"})
    net.load_state_dict(state, strict=True)
    return net.eval(), cfg


def load_official_c2i(path: str | Path, which: str = "model_ema1", hbq_rounds: int = 4, target: str = "index") -> GRN:
    """Build our network and strictly load one weight set (``model``, ``model_ema1`` or ``model_ema2``)."""
    path = Path(path)
    return _build(read_official_c2i(path), which, path, hbq_rounds, target)[0]


def load(ckpt: Mapping[str, Any], source: Any, ema: str | None = "ema1", hbq_rounds: int = 4,
         target: str = "index") -> tuple[GRN, dict[str, Any]]:
    """The adapter's direct load: ``ema`` ``None`` / ``ema1`` / ``ema2`` -> weight set ``model`` /
    ``model_ema1`` / ``model_ema2``; returns ``(net, hyper_parameters)`` as :func:`c2i_checkpoint` stores them
    (no tokenizer is recorded: the pipelines then ask for one)."""
    which = "model" if ema is None else f"model_{ema}"
    if which not in ckpt:
        raise KeyError(f"checkpoint {source} has no EMA named {ema!r} (official C2I files hold ema1 and ema2)")
    net, cfg = _build(ckpt, which, source, hbq_rounds, target)
    return net, _hyper_parameters(cfg, None)


def to_checkpoint(ckpt: Mapping[str, Any], source: Any, tokenizer_ckpt: str | None = None, hbq_rounds: int = 4,
                  target: str = "index") -> dict[str, Any]:
    """An official C2I checkpoint as a ``GeneratorLitModule``-style one: the live weights under ``net.`` and
    ``model_ema1`` / ``model_ema2`` as the EMA buffers ``emas.ema1.`` / ``emas.ema2.`` (float32 ``shadow__*`` per
    parameter, ``num_updates`` 0), ``hyper_parameters`` with the inferred network config.

    Each weight set is checked by a strict load into one network on the meta device (names and shapes, no
    memory), then taken from ``ckpt`` as it is, cast to the network's dtypes: no weight set is copied twice."""
    missing = [k for k in OFFICIAL_C2I_KEYS if k not in ckpt]
    if missing:
        raise KeyError(f"{source} is not an official GRN C2I checkpoint: missing {missing}")
    cfg = infer_c2i_config(_weight_set(ckpt, "model", source), hbq_rounds, target)
    with torch.device("meta"):
        net = build_generator(**{k: v for k, v in cfg.items() if k != "_target_"})
    dtypes = {k: v.dtype for k, v in net.state_dict().items()}
    averaged = [n for n, p in net.named_parameters() if p.dtype.is_floating_point]  # what an EMA keeps
    state: dict[str, torch.Tensor] = {}
    for which in OFFICIAL_C2I_KEYS:
        weights = _weight_set(ckpt, which, source)
        net.load_state_dict(weights, strict=True, assign=True)  # the check; assign: nothing is copied
        weights = {k: v.to(dtypes[k]) for k, v in weights.items()}
        if which == "model":
            state.update({NET_PREFIX + k: v for k, v in weights.items()})
            continue
        prefix = ema_prefix(which.removeprefix("model_"))
        state.update({prefix + shadow_key(n): weights[n].float() for n in averaged})
        state[prefix + "num_updates"] = torch.zeros((), dtype=torch.long)
    return {
        "hyper_parameters": _hyper_parameters(cfg, tokenizer_ckpt),
        "state_dict": state,
        "epoch": int(ckpt.get("epoch", 0)),
        "global_step": 0,
        "converted_from": str(source),
    }


def c2i_checkpoint(path: str | Path, tokenizer_ckpt: str | None = None, hbq_rounds: int = 4,
                   target: str = "index") -> dict:
    """:func:`to_checkpoint` of the file at ``path`` (read once)."""
    return to_checkpoint(read_official_c2i(path), path, tokenizer_ckpt, hbq_rounds, target)


def matches(ckpt: Mapping[str, Any]) -> bool:
    """A dict with at least one of the official weight sets, each a dict of tensors."""
    found = [ckpt[k] for k in OFFICIAL_C2I_KEYS if k in ckpt]
    return bool(found) and all(isinstance(v, Mapping) for v in found)


ADAPTER = OfficialAdapter("c2i", "generator", matches, load, to_checkpoint)
