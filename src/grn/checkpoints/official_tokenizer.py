"""Official HBQ tokenizer checkpoints → :class:`~grn.models.tokenizer.HBQTokenizer` (the ``tokenizer`` adapter).

An official file (``HBQ_image_tokenizer_16dim_M4.ckpt``, ``HBQ_tokenizer_64dim_M4.ckpt``; facts §2.4, §7; and the
newer joint ``HBQ_image_video_tokenizer_64dim_M4_20260618.ckpt`` / ``…_20260626.ckpt``, official_update D9-D10) is a
dict whose ``ema`` entry (else ``vae``) is the state dict of the official network: 196 tensors whose names and
shapes are exactly those of :class:`HBQTokenizer` built with the official layout, so loading is a strict
``load_state_dict`` — no renaming. ``hbq_rounds`` (M) is not stored in the files (their names say "M4").
Every load reports whether the middle attention blocks are inert (``proj.weight`` all zero, as the released
training code leaves them: it disables attention, official_update D9): logged, and set on the tokenizer as
``middle_attention_inert`` (the encoder's block) and ``inert_attention`` (each block's flag).
:func:`load_tokenizer <grn.checkpoints.load_tokenizer>` takes such a file directly; :func:`to_checkpoint` turns
it into a grn tokenizer checkpoint (``scripts/convert_official.py``).

    tok = load_official_tokenizer("HBQ_image_tokenizer_16dim_M4.ckpt", latent_dim=16)
    cfg = official_tokenizer_config(read_official_state(path))   # the Hydra config it implies
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from grn.checkpoints.build import read_checkpoint
from grn.checkpoints.layout import EXPORT_KEY, TOKENIZER_PREFIX
from grn.checkpoints.adapter import OfficialAdapter
from grn.models.tokenizer import HBQTokenizer

__all__ = [
    "ADAPTER",
    "OFFICIAL_STATE_KEYS",
    "RELEASE_FILES",
    "MIDDLE_ATTENTION",
    "inert_middle_attention",
    "official_layout",
    "read_official_state",
    "official_tokenizer_config",
    "load_official_tokenizer",
]

log = logging.getLogger(__name__)

OFFICIAL_STATE_KEYS = ("ema", "vae")  # tried in this order, as the official loaders do
# The released tokenizer files and their latent width d (all M = 4, the same 196 keys; official_update D10).
RELEASE_FILES = {
    "HBQ_image_tokenizer_16dim_M4.ckpt": 16,  # C2I
    "HBQ_tokenizer_64dim_M4.ckpt": 64,  # the first T2I/T2V release (now 404 on HF)
    "HBQ_image_video_tokenizer_64dim_M4_20260618.ckpt": 64,
    "HBQ_image_video_tokenizer_64dim_M4_20260626.ckpt": 64,
}
MIDDLE_ATTENTION = ("encoder.middle.1", "decoder.middle.1")  # the two attention blocks' key prefixes


def inert_middle_attention(state: Mapping[str, torch.Tensor]) -> dict[str, bool]:
    """``{block: its proj.weight is all zero}`` for each middle attention block present in ``state``.

    ``proj.weight`` starts at zero, so an all-zero one was never trained: the block then adds only
    ``proj.bias``, as when the network was trained with attention disabled (official_update D9).
    """
    return {
        block: not bool(state[f"{block}.proj.weight"].any())
        for block in MIDDLE_ATTENTION
        if f"{block}.proj.weight" in state
    }


def official_layout(latent_dim: int, hbq_rounds: int = 4) -> dict[str, Any]:
    """Constructor arguments of the official network (facts §2.1) for latent width ``latent_dim``."""
    return dict(
        in_channels=3,
        latent_dim=latent_dim,
        hbq_rounds=hbq_rounds,
        patch_size=2,
        enc_channels=160,
        dec_channels=256,
        channel_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attention=True,
        dropout=0.0,
        temporal_downsample=[False, True, True],
    )


def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The weight dict of an official checkpoint file (its ``ema`` entry, else ``vae``), loaded on the CPU
    with ``weights_only=True`` (memory-mapped, so nothing is copied until used)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"official tokenizer checkpoint not found: {path} (from the HF repo bytedance-research/GRN)"
        )
    return _state(read_checkpoint(path, mmap=True), path)[1]


def _state(ckpt: Any, source: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """``(entry, its weight dict)`` of a loaded official file: ``ema``, else ``vae``."""
    if not isinstance(ckpt, dict):
        raise TypeError(f"{source}: expected a dict with an 'ema' or 'vae' entry, got {type(ckpt).__name__}")
    for key in OFFICIAL_STATE_KEYS:
        if key in ckpt:
            return key, ckpt[key]
    raise ValueError(
        f"{source}: no 'ema' or 'vae' entry (top-level keys: {sorted(ckpt)[:8]}); not an HBQ tokenizer file?"
    )


def _stage_indices(state: dict[str, torch.Tensor], prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pat.match(k))})


def official_tokenizer_config(
    state: dict[str, torch.Tensor], hbq_rounds: int = 4, in_channels: int = 3
) -> dict[str, Any]:
    """The ``_target_`` config of :class:`HBQTokenizer` that an official-layout state dict implies.

    Read off the shapes: d from ``conv2``, patch size and widths from the first and last convs, stages and
    residual blocks from the key indices, temporal flags from which ``time_conv`` weights exist.
    """
    try:
        latent_dim = state["conv2.weight"].shape[0]
        enc_conv = state["encoder.conv1.weight"]  # (enc, C·p², 3, 3, 3)
        dec_head = state["decoder.head.2.weight"]  # (C·p², dec·m_0, 3, 3, 3)
        stages = _stage_indices(state, "encoder.downsamples.")
        blocks = _stage_indices(state, "encoder.downsamples.0.downsamples.")
        num_res_blocks = sum(
            f"encoder.downsamples.0.downsamples.{j}.residual.0.gamma" in state for j in blocks
        )
        enc = enc_conv.shape[0]
        mult = [
            state[f"encoder.downsamples.{i}.downsamples.0.residual.2.weight"].shape[0] // enc for i in stages
        ]
    except (KeyError, IndexError) as err:
        raise ValueError(f"not an official HBQ tokenizer state dict: missing {err}") from err
    pixel_channels = enc_conv.shape[1]  # in_channels · p²
    patch_size = next((p for p in (1, 2) if pixel_channels == in_channels * p * p), None)
    if patch_size is None or dec_head.shape[0] != pixel_channels:
        raise ValueError(
            f"encoder input / decoder output widths {pixel_channels} / {dec_head.shape[0]} do not fit "
            f"{in_channels} pixel channels with a 1×1 or 2×2 patchify"
        )
    temporal = [
        f"encoder.downsamples.{i}.downsamples.{num_res_blocks}.time_conv.weight" in state for i in stages[:-1]
    ]
    return {
        "_target_": "grn.models.tokenizer.HBQTokenizer",
        "in_channels": in_channels,
        "latent_dim": int(latent_dim),
        "hbq_rounds": hbq_rounds,
        "patch_size": patch_size,
        "enc_channels": int(enc),
        "dec_channels": int(dec_head.shape[1] // mult[0]),
        "channel_mult": mult,
        "num_res_blocks": num_res_blocks,
        "attention": "encoder.middle.1.to_qkv.weight" in state,
        "dropout": 0.0,
        "temporal_downsample": temporal,
    }


def _describe(keys: set[str], n: int = 4) -> str:
    shown = sorted(keys)[:n]
    return ", ".join(shown) + (f", … ({len(keys)} in all)" if len(keys) > n else "")


def _checked(state: dict[str, torch.Tensor], source: Any, latent_dim: int | None,
             hbq_rounds: int) -> tuple[HBQTokenizer, dict[str, Any]]:
    """``(the implied HBQTokenizer on the meta device, its config)`` once ``state`` fits it exactly: every name, no
    other, every shape (else one ValueError naming the file and the first offending tensor)."""
    cfg = official_tokenizer_config(state, hbq_rounds)
    if latent_dim is not None and cfg["latent_dim"] != latent_dim:
        raise ValueError(f"{source}: the checkpoint has latent_dim {cfg['latent_dim']}, expected {latent_dim}")
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    with torch.device("meta"):  # no 700 M-parameter random init: the weights are assigned from the file
        tok = HBQTokenizer(**kwargs)
    expected = {k: v.shape for k, v in tok.state_dict().items()}
    missing, extra = set(expected) - set(state), set(state) - set(expected)
    if missing or extra:
        parts = ([f"missing {_describe(missing)}"] if missing else []) + (
            [f"unexpected {_describe(extra)}"] if extra else []
        )
        raise ValueError(f"{source}: not the official tokenizer layout: " + "; ".join(parts))
    wrong = {k for k, shape in expected.items() if state[k].shape != shape}
    if wrong:
        k = min(wrong)
        raise ValueError(
            f"{source}: {len(wrong)} tensors have the wrong shape, e.g. {k}: {tuple(state[k].shape)}"
            f" vs {tuple(expected[k])}"
        )
    return tok, cfg


def tokenizer_from_state(
    state: dict[str, torch.Tensor],
    source: Any = "state dict",
    latent_dim: int | None = None,
    hbq_rounds: int = 4,
    dtype: torch.dtype | None = None,
) -> tuple[HBQTokenizer, dict[str, Any]]:
    """``(HBQTokenizer holding an official-layout state dict, in eval mode, its _target_ config)``; the tensors
    are assigned, not copied (memory-mapped ones stay so). Checks and arguments as :func:`load_official_tokenizer`."""
    tok, cfg = _checked(state, source, latent_dim, hbq_rounds)
    tok.load_state_dict(state, strict=True, assign=True)
    if dtype is not None:
        tok = tok.to(dtype)
    _report_attention(tok, inert_middle_attention(state), source)
    return tok.eval(), cfg


def _report_attention(tok: HBQTokenizer, inert: dict[str, bool], source: Any) -> None:
    """Record on ``tok`` which middle attention blocks are inert (``inert_attention``; the encoder's flag as
    ``middle_attention_inert``, None without attention), and log it."""
    tok.inert_attention = inert
    tok.middle_attention_inert = inert.get(MIDDLE_ATTENTION[0])
    _log_attention(inert, source)


def _log_attention(inert: dict[str, bool], source: Any) -> None:
    if not inert:
        return
    if any(inert.values()):
        blocks = ", ".join(b for b, flag in inert.items() if flag)
        log.warning(
            "%s: middle attention inert (proj.weight all zero, so it adds only its bias) in %s, as in a "
            "tokenizer trained with attention disabled (official_update D9)", source, blocks
        )
    else:
        log.info("%s: the middle attention blocks are trained (proj.weight non-zero)", source)


def load_official_tokenizer(
    path: str | Path,
    latent_dim: int | None = None,
    hbq_rounds: int = 4,
    dtype: torch.dtype | None = None,
    return_config: bool = False,
) -> HBQTokenizer | tuple[HBQTokenizer, dict[str, Any]]:
    """Build :class:`HBQTokenizer` from an official checkpoint file and load its weights strictly (eval mode).

    Args:
        path: the ``.ckpt`` file (a dict with ``ema`` or ``vae``).
        latent_dim: expected d (16: the C2I image tokenizer, 64: the joint ones); None: the d of a release
            file of that name (:data:`RELEASE_FILES`), else the file's.
        hbq_rounds: M, which the files do not store (4 for every released model).
        dtype: cast the weights (None keeps the file's dtype).
        return_config: also return the ``_target_`` config the weights imply (for Hydra / checkpoints).

    The returned tokenizer carries ``middle_attention_inert`` (True when ``encoder.middle.1.proj.weight`` is all
    zero) and ``inert_attention`` (that flag per middle attention block); a warning is logged when one is inert.

    Raises:
        FileNotFoundError: no such file (one line, naming it).
        ValueError: the dict lacks ``ema``/``vae``, d differs from ``latent_dim``, or keys are missing /
            extra / of the wrong shape for the implied network (named in the message).
    """
    if latent_dim is None:
        latent_dim = RELEASE_FILES.get(Path(path).name)
    tok, cfg = tokenizer_from_state(read_official_state(path), path, latent_dim, hbq_rounds, dtype)
    return (tok, cfg) if return_config else tok


def load(ckpt: Mapping[str, Any], source: Any, ema: str | None = "ema1", latent_dim: int | None = None,
         hbq_rounds: int = 4) -> tuple[HBQTokenizer, dict[str, Any]]:
    """The adapter's direct load: the ``ema`` entry, else ``vae`` (a release holds one set of final weights, so
    ``ema`` does not choose); returns ``(tokenizer, {"tokenizer": config})``."""
    tok, cfg = tokenizer_from_state(_state(ckpt, source)[1], source, latent_dim, hbq_rounds)
    return tok, {"tokenizer": cfg}


def to_checkpoint(ckpt: Mapping[str, Any], source: Any, hbq_rounds: int = 4, **_: Any) -> dict[str, Any]:
    """An official tokenizer file as a grn tokenizer checkpoint: ``hyper_parameters.tokenizer`` and the weights
    under ``tokenizer.``, marked final (:data:`~grn.checkpoints.layout.EXPORT_KEY`: no EMA is applied on load).
    Options other than ``hbq_rounds`` (a tokenizer checkpoint, a label target) do not apply and are ignored."""
    entry, state = _state(ckpt, source)
    _, cfg = _checked(state, source, None, hbq_rounds)
    _log_attention(inert_middle_attention(state), source)
    return {
        "hyper_parameters": {"tokenizer": cfg},
        "state_dict": {TOKENIZER_PREFIX + k: v for k, v in state.items()},
        EXPORT_KEY: {"ema": "ema" if entry == "ema" else None},
        "global_step": 0,
        "converted_from": str(source),
    }


def matches(ckpt: Mapping[str, Any]) -> bool:
    """A dict with an ``ema`` or ``vae`` weight dict."""
    return any(isinstance(ckpt.get(k), Mapping) for k in OFFICIAL_STATE_KEYS)


ADAPTER = OfficialAdapter("tokenizer", "tokenizer", matches, load, to_checkpoint)
