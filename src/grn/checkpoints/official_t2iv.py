"""Official T2I/T2V weights (``GRN_T2I_2B.pth``, ``GRN_T2V_2B.pth``; facts §4.7, §7) -> :class:`T2IVNet` (the
``t2iv`` adapter: :func:`load_t2iv <grn.checkpoints.load_t2iv>` takes such a file directly, :func:`to_checkpoint`
converts it).

A released file is a flat state dict of 319 tensors. Names equal ours except for the blocks, which the official
network keeps in FSDP chunks: ``block_chunks.{c}.module.{j}.…`` is our ``blocks.{c·n + j}.…`` with n blocks per
chunk (GRN2b: 7 chunks of 4). Everything else is a strict ``load_state_dict``; the shapes give the size, the text
width and the label width, but not whether the labels are bits or indices (both are 512 wide for d = 64, M = 4
bits and d = 32, M = 4 indices), so ``target`` and ``hbq_rounds`` are given (released models: bits, M = 4).

    net = load_official_t2iv("GRN_T2I_2B.pth")                 # GRN2b, GRN_bit, d = 64
    state = to_official_keys(net.state_dict(), block_chunks=7)  # and back
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from grn.checkpoints.build import read_checkpoint
from grn.checkpoints.layout import EXPORT_KEY, NET_PREFIX
from grn.checkpoints.adapter import OfficialAdapter
from grn.models.t2iv import T2IV_SIZES, T2IVNet, build_t2iv

__all__ = ["ADAPTER", "from_official_keys", "infer_t2iv_config", "load_official_t2iv", "read_official_t2iv",
           "t2iv_checkpoint", "to_official_keys"]

_OFFICIAL_BLOCK = re.compile(r"^block_chunks\.(\d+)\.module\.(\d+)\.(.+)$")
_OUR_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def from_official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``block_chunks.{c}.module.{j}.x`` to ``blocks.{c·n + j}.x`` (n = blocks per chunk, read off the keys);
    other keys are kept. A ``module.`` prefix (a DDP/FSDP wrapper) is stripped first."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    found = [(int(m[1]), int(m[2])) for m in map(_OFFICIAL_BLOCK.match, state) if m]
    if not found:
        return dict(state)
    per_chunk = 1 + max(j for _, j in found)
    out = {}
    for key, value in state.items():
        m = _OFFICIAL_BLOCK.match(key)
        out[f"blocks.{int(m[1]) * per_chunk + int(m[2])}.{m[3]}" if m else key] = value
    return out


def to_official_keys(state: dict[str, torch.Tensor], block_chunks: int) -> dict[str, torch.Tensor]:
    """Our names -> the official chunked names (the inverse of :func:`from_official_keys`)."""
    depth = 1 + max((int(m[1]) for m in map(_OUR_BLOCK.match, state) if m), default=-1)
    if depth % block_chunks:
        raise ValueError(f"depth {depth} is not divisible by block_chunks {block_chunks}")
    per_chunk = depth // block_chunks
    out = {}
    for key, value in state.items():
        m = _OUR_BLOCK.match(key)
        out[f"block_chunks.{int(m[1]) // per_chunk}.module.{int(m[1]) % per_chunk}.{m[2]}" if m else key] = value
    return out


def infer_t2iv_config(state: dict[str, torch.Tensor], hbq_rounds: int = 4, target: str = "bits") -> dict[str, Any]:
    """Constructor arguments (a Hydra ``_target_`` dict) of the network an official or our state dict holds."""
    state = from_official_keys(state)
    needed = ("word_embed.weight", "text_proj.weight", "head.proj.weight", "blocks.0.attn.q_norm.weight",
              "blocks.0.mlp.gate_proj.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise KeyError(f"not a GRN T2I/T2V state dict: missing {missing}")
    hidden, width = state["word_embed.weight"].shape
    head_dim = state["blocks.0.attn.q_norm.weight"].shape[0]
    depth = 1 + max(int(m[1]) for m in map(_OUR_BLOCK.match, state) if m)
    if state["head.proj.weight"].shape[0] != width:
        raise ValueError(f"head width {state['head.proj.weight'].shape[0]} differs from the input width {width}: "
                         "a GRN_ind checkpoint trained with detail_num_lvl != 2^M cannot be used")
    per_channel = 2 * hbq_rounds if target == "bits" else 2**hbq_rounds
    if width % per_channel:
        raise ValueError(f"input width {width} does not fit target={target} with hbq_rounds={hbq_rounds}")
    shape = dict(depth=depth, hidden_size=hidden, num_heads=hidden // head_dim,
                 mlp_hidden=state["blocks.0.mlp.gate_proj.weight"].shape[0])
    size = next((n for n, s in T2IV_SIZES.items() if all(getattr(s, k) == v for k, v in shape.items())), None)
    cfg: dict[str, Any] = {"_target_": "grn.models.t2iv.build_t2iv", "size": size or "tiny"}
    if size is None:
        cfg.update(shape)  # an unregistered size: spell the shape out
    cfg.update(latent_dim=width // per_channel, hbq_rounds=hbq_rounds, target=target,
               text_dim=state["text_proj.weight"].shape[1])
    return cfg


def read_official_t2iv(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in an official file, memory-mapped on the CPU with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official T2I/T2V checkpoint not found: {path} (GRN_T2I_2B.pth / GRN_T2V_2B.pth "
                                "from the HF repo bytedance-research/GRN)")
    return _flat(read_checkpoint(path, mmap=True), path)


def _flat(state: Any, source: Any) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source} is not a flat state dict (the released T2I/T2V files are)")
    return state


def load_official_t2iv(
    path_or_state: str | Path | dict[str, torch.Tensor],
    hbq_rounds: int = 4,
    target: str = "bits",
    dtype: torch.dtype | None = None,
    attn_backend: str = "sdpa",
) -> T2IVNet:
    """Build our network on the meta device and strictly load an official state dict into it (no second copy of
    the weights: tensors are assigned, memory-mapped from the file). ``dtype`` casts after loading."""
    state = path_or_state if isinstance(path_or_state, dict) else read_official_t2iv(path_or_state)
    state = from_official_keys(state)
    cfg = infer_t2iv_config(state, hbq_rounds, target)
    cfg.pop("_target_")
    with torch.device("meta"):
        net = build_t2iv(**cfg, attn_backend=attn_backend)
    net.load_state_dict(state, strict=True, assign=True)
    if dtype is not None:
        net = net.to(dtype)
    return net.eval()


def load(ckpt: Mapping[str, Any], source: Any, ema: str | None = "ema1", hbq_rounds: int = 4,
         target: str = "bits") -> tuple[T2IVNet, dict[str, Any]]:
    """The adapter's direct load: ``(net, hyper_parameters)`` as :func:`to_checkpoint` stores them. A release
    holds one set of final weights (no EMAs), so ``ema`` does not choose, as for an export."""
    state = _flat(dict(ckpt), source)
    net = load_official_t2iv(state, hbq_rounds, target)
    return net, _hyper_parameters(infer_t2iv_config(state, hbq_rounds, target), None)


def _hyper_parameters(cfg: dict[str, Any], tokenizer_ckpt: str | None) -> dict[str, Any]:
    return {"net": cfg, "tokenizer_ckpt": tokenizer_ckpt, "ema_decays": []}


def to_checkpoint(ckpt: Mapping[str, Any], source: Any, tokenizer_ckpt: str | None = None, hbq_rounds: int = 4,
                  target: str = "bits") -> dict[str, Any]:
    """An official T2I/T2V state dict as a project checkpoint: ``hyper_parameters.net`` (the Hydra config) and the
    weights under ``net.``, like :func:`grn.checkpoints.official_c2i.c2i_checkpoint`. The release has no EMA or
    optimiser: the file is marked final (:data:`~grn.checkpoints.layout.EXPORT_KEY`), so it loads with any
    ``ema``."""
    state = from_official_keys(_flat(dict(ckpt), source))
    cfg = infer_t2iv_config(state, hbq_rounds, target)
    return {
        "hyper_parameters": _hyper_parameters(cfg, tokenizer_ckpt),
        "state_dict": {NET_PREFIX + k: v for k, v in state.items()},
        EXPORT_KEY: {"ema": None},
        "epoch": 0,
        "global_step": 0,
        "converted_from": str(source),
    }


def t2iv_checkpoint(path: str | Path, tokenizer_ckpt: str | None = None, hbq_rounds: int = 4,
                    target: str = "bits") -> dict:
    """:func:`to_checkpoint` of the file at ``path`` (read once)."""
    return to_checkpoint(read_official_t2iv(path), path, tokenizer_ckpt, hbq_rounds, target)


def matches(ckpt: Mapping[str, Any]) -> bool:
    """A flat dict of tensors with the text-to-image network's input embedding (``word_embed.weight``, or under a
    DDP/FSDP ``module.`` prefix)."""
    return ("word_embed.weight" in ckpt or "module.word_embed.weight" in ckpt) and all(
        isinstance(v, torch.Tensor) for v in ckpt.values())


ADAPTER = OfficialAdapter("t2iv", "t2iv", matches, load, to_checkpoint)
