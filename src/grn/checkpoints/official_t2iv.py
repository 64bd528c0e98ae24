"""Official T2I/T2V weights (``GRN_T2I_2B.pth``, ``GRN_T2V_2B.pth``, the ``…_FSA_…`` files and GRN-8B; facts §4.7,
§7, official update §A) -> :class:`T2IVNet` (the ``t2iv`` adapter: :func:`load_t2iv <grn.checkpoints.load_t2iv>`
takes such a file directly, :func:`to_checkpoint` converts it).

A released file is a flat state dict (GRN2b 319 tensors, GRN8b 407), or the official trainer's envelope
``{'trainer': {'gpt_fsdp': …, 'gpt_ema_fsdp': …}, …}`` (official update §A4, §C6): the EMA is taken when it is
there and an EMA is asked for (the default), else the live weights. The shapes give the size (GRN2b, GRN8b, the
grouped-query GRN8b variant: key/value heads from ``k_proj``), the text width and the label width.

The attention pattern is not in the weights: files named ``…_FSA_…`` (``GRN_T2I_2B_FSA_251600.pth``,
``GRN_T2V_TITAN_FSA_sft10600_ema.pth``) were trained with full attention within each sample and load with
``attention='fsa'``; every other file (the old ``GRN_T2I_2B.pth`` / ``GRN_T2V_2B.pth``) with ``text_only``.
``attention=`` overrides. The pattern is stored in the config, so a converted file reloads with it.

A flat file's Names equal ours except for the blocks, which the official
network keeps in FSDP chunks: ``block_chunks.{c}.module.{j}.…`` is our ``blocks.{c·n + j}.…`` with n blocks per
chunk (GRN2b: 7 chunks of 4, GRN8b: 6 of 6). Everything else is a strict ``load_state_dict``; the shapes give the size, the text
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
from grn.models.packing import ATTENTION_PATTERNS, FSA, TEXT_ONLY
from grn.models.t2iv import T2IV_SIZES, T2IVNet, build_t2iv

__all__ = ["ADAPTER", "attention_of_file", "from_official_keys", "infer_t2iv_config", "load_official_t2iv",
           "official_weights", "read_official_t2iv", "t2iv_checkpoint", "to_official_keys"]

_OFFICIAL_BLOCK = re.compile(r"^block_chunks\.(\d+)\.module\.(\d+)\.(.+)$")
_OUR_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_FSA_NAME = re.compile(r"(^|[_.\-])fsa([_.\-]|$)", re.IGNORECASE)
_ENVELOPE, _LIVE, _EMA = "trainer", "gpt_fsdp", "gpt_ema_fsdp"


def attention_of_file(source: Any) -> str:
    """The attention pattern a release file was trained with, from its name: ``fsa`` for ``…_FSA_…`` files, else
    ``text_only`` (a state dict without a name: ``text_only``)."""
    if isinstance(source, (str, Path)) and _FSA_NAME.search(Path(source).stem):
        return FSA
    return TEXT_ONLY


def official_weights(ckpt: Mapping[str, Any], source: Any, ema: str | None = "ema1") -> dict[str, torch.Tensor]:
    """The flat state dict of a release: the file itself, or from the trainer envelope ``trainer.gpt_ema_fsdp``
    (when ``ema`` is not None and the file has it) or ``trainer.gpt_fsdp``."""
    trainer = ckpt.get(_ENVELOPE) if isinstance(ckpt, Mapping) else None
    if isinstance(trainer, Mapping):
        use = _EMA if ema is not None and isinstance(trainer.get(_EMA), Mapping) else _LIVE
        if not isinstance(trainer.get(use), Mapping):
            raise ValueError(f"{source}: the trainer envelope has no '{_ENVELOPE}.{_LIVE}' weights "
                             f"(found {sorted(trainer)})")
        return _flat(dict(trainer[use]), source)
    return _flat(dict(ckpt), source)


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


def infer_t2iv_config(state: dict[str, torch.Tensor], hbq_rounds: int = 4, target: str = "bits",
                      attention: str = TEXT_ONLY) -> dict[str, Any]:
    """Constructor arguments (a Hydra ``_target_`` dict) of the network an official or our state dict holds;
    ``attention`` (not in the weights, see :func:`attention_of_file`) is recorded as given, and ``i2v_mode`` as
    ``first_frame``: the official image-to-video form (official update §B; the TITAN file serves T2V and I2V)."""
    if attention not in ATTENTION_PATTERNS:
        raise ValueError(f"unknown attention pattern {attention!r}; choose one of {ATTENTION_PATTERNS}")
    chunks = [int(m[1]) for m in map(_OFFICIAL_BLOCK.match, state) if m]
    state = from_official_keys(state)
    needed = ("word_embed.weight", "text_proj.weight", "head.proj.weight", "blocks.0.attn.q_norm.weight",
              "blocks.0.attn.k_proj.weight", "blocks.0.mlp.gate_proj.weight")
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
    num_heads = hidden // head_dim
    kv_heads = state["blocks.0.attn.k_proj.weight"].shape[0] // head_dim  # grouped-query: fewer k/v heads
    shape = dict(depth=depth, hidden_size=hidden, num_heads=num_heads,
                 mlp_hidden=state["blocks.0.mlp.gate_proj.weight"].shape[0])

    def fits(s) -> bool:
        return all(getattr(s, k) == v for k, v in shape.items()) and (s.num_kv_heads or s.num_heads) == kv_heads

    size = next((n for n, s in T2IV_SIZES.items() if fits(s)), None)
    cfg: dict[str, Any] = {"_target_": "grn.models.t2iv.build_t2iv", "size": size or "tiny"}
    if size is None:  # an unregistered size: spell the shape out (and the official chunking, for the key names)
        cfg.update(shape, block_chunks=1 + max(chunks, default=0))
        if kv_heads != num_heads:
            cfg["num_kv_heads"] = kv_heads
    cfg.update(latent_dim=width // per_channel, hbq_rounds=hbq_rounds, target=target,
               text_dim=state["text_proj.weight"].shape[1], attention=attention, i2v_mode="first_frame")
    return cfg


def read_official_t2iv(path: str | Path, ema: str | None = "ema1") -> dict[str, torch.Tensor]:
    """The state dict in an official file (flat, or the trainer envelope: see :func:`official_weights`),
    memory-mapped on the CPU with ``weights_only=True``."""
    path = _require_file(path)
    return official_weights(read_checkpoint(path, mmap=True), path, ema)


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official T2I/T2V checkpoint not found: {path} (GRN_T2I_2B.pth / GRN_T2V_2B.pth "
                                "or a …_FSA_… file from the HF repo bytedance-research/GRN)")
    return path


def _flat(state: Any, source: Any) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source} is not a flat state dict or a trainer envelope {{'trainer': {{'gpt_fsdp': …}}}} "
                         "(the released T2I/T2V files are one of these)")
    return state


def load_official_t2iv(
    path_or_state: str | Path | dict[str, torch.Tensor],
    hbq_rounds: int = 4,
    target: str = "bits",
    dtype: torch.dtype | None = None,
    attn_backend: str = "sdpa",
    attention: str | None = None,
    ema: str | None = "ema1",
) -> T2IVNet:
    """Build our network on the meta device and strictly load an official state dict (flat or the trainer
    envelope; ``ema`` chooses ``gpt_ema_fsdp`` there) into it (no second copy of the weights: tensors are
    assigned, memory-mapped from the file). ``dtype`` casts after loading. ``attention``: None takes the pattern
    from the file name (:func:`attention_of_file`; a dict: ``text_only``)."""
    if isinstance(path_or_state, dict):
        state = official_weights(path_or_state, "the state dict", ema)
    else:
        state = read_official_t2iv(path_or_state, ema)
    attention = attention_of_file(path_or_state) if attention is None else attention
    state = from_official_keys(state)
    cfg = infer_t2iv_config(state, hbq_rounds, target, attention)
    cfg.pop("_target_")
    with torch.device("meta"):
        net = build_t2iv(**cfg, attn_backend=attn_backend)
    net.load_state_dict(state, strict=True, assign=True)
    if dtype is not None:
        net = net.to(dtype)
    return net.eval()


def load(ckpt: Mapping[str, Any], source: Any, ema: str | None = "ema1", hbq_rounds: int = 4,
         target: str = "bits") -> tuple[T2IVNet, dict[str, Any]]:
    """The adapter's direct load: ``(net, hyper_parameters)`` as :func:`to_checkpoint` stores them. A flat release
    holds one set of final weights, so ``ema`` does not choose, as for an export; in a trainer envelope it takes
    the EMA (``gpt_ema_fsdp``) over the live weights. The attention pattern comes from the file name."""
    state = official_weights(ckpt, source, ema)
    attention = attention_of_file(source)
    net = load_official_t2iv(state, hbq_rounds, target, attention=attention)
    return net, _hyper_parameters(infer_t2iv_config(state, hbq_rounds, target, attention), None)


def _hyper_parameters(cfg: dict[str, Any], tokenizer_ckpt: str | None) -> dict[str, Any]:
    return {"net": cfg, "tokenizer_ckpt": tokenizer_ckpt, "ema_decays": []}


def to_checkpoint(ckpt: Mapping[str, Any], source: Any, tokenizer_ckpt: str | None = None, hbq_rounds: int = 4,
                  target: str = "bits", attention: str | None = None) -> dict[str, Any]:
    """An official T2I/T2V state dict as a project checkpoint: ``hyper_parameters.net`` (the Hydra config, with
    the attention pattern: ``attention``, or from the file name) and the weights under ``net.``, like
    :func:`grn.checkpoints.official_c2i.c2i_checkpoint`. A release holds one set of final weights (a trainer
    envelope: its EMA where it has one) and no optimiser: the file is marked final
    (:data:`~grn.checkpoints.layout.EXPORT_KEY`), so it loads with any ``ema``."""
    state = from_official_keys(official_weights(ckpt, source))
    cfg = infer_t2iv_config(state, hbq_rounds, target, attention_of_file(source) if attention is None else attention)
    return {
        "hyper_parameters": _hyper_parameters(cfg, tokenizer_ckpt),
        "state_dict": {NET_PREFIX + k: v for k, v in state.items()},
        EXPORT_KEY: {"ema": None},
        "epoch": 0,
        "global_step": 0,
        "converted_from": str(source),
    }


def t2iv_checkpoint(path: str | Path, tokenizer_ckpt: str | None = None, hbq_rounds: int = 4,
                    target: str = "bits", attention: str | None = None) -> dict:
    """:func:`to_checkpoint` of the file at ``path`` (read once)."""
    path = _require_file(path)
    return to_checkpoint(read_checkpoint(path, mmap=True), path, tokenizer_ckpt, hbq_rounds, target, attention)


def _is_flat_t2iv(state: Any) -> bool:
    return isinstance(state, Mapping) and ("word_embed.weight" in state or "module.word_embed.weight" in state) \
        and all(isinstance(v, torch.Tensor) for v in state.values())


def matches(ckpt: Mapping[str, Any]) -> bool:
    """A flat dict of tensors with the text-to-image network's input embedding (``word_embed.weight``, or under a
    DDP/FSDP ``module.`` prefix), or the official trainer envelope holding one under ``trainer.gpt_fsdp``."""
    trainer = ckpt.get(_ENVELOPE)
    return _is_flat_t2iv(ckpt) or (isinstance(trainer, Mapping) and _is_flat_t2iv(trainer.get(_LIVE)))


ADAPTER = OfficialAdapter("t2iv", "t2iv", matches, load, to_checkpoint)
