"""Official GRN checkpoints -> this project's modules.

C2I (``GRN_ind_B_ep599.pth`` and the like, facts §3.4, §7): a dict with ``model``, ``model_ema1``, ``model_ema2``
(each the state dict of the official ``Denoiser`` wrapper, keys prefixed ``net.``), ``epoch`` and optionally
``optimizer``. The network's parameter names and shapes are the official ones, so conversion is a prefix strip
plus a strict load; :func:`c2i_checkpoint` repackages all three weight sets into a checkpoint that
:func:`grn.lit_modules.generator.load_generator` and ``sample.py`` / ``eval.py`` read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from grn.models.ema import EMA
from grn.models.generator import GENERATOR_SIZES, GRN, build_generator

OFFICIAL_C2I_KEYS = ("model", "model_ema1", "model_ema2")


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "net.") -> dict[str, torch.Tensor]:
    """Keys under ``prefix`` with it removed; other keys are dropped."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


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


def load_official_c2i(path: str | Path, which: str = "model_ema1", hbq_rounds: int = 4, target: str = "index") -> GRN:
    """Build our network and strictly load one weight set (``model``, ``model_ema1`` or ``model_ema2``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if which not in ckpt:
        raise KeyError(f"{path} has no {which!r} (keys: {sorted(ckpt)})")
    state = strip_prefix(ckpt[which])
    cfg = infer_c2i_config(state, hbq_rounds, target)
    cfg.pop("_target_")
    net = build_generator(**cfg)
    net.load_state_dict(state, strict=True)
    return net.eval()


def c2i_checkpoint(path: str | Path, tokenizer_ckpt: str | None = None, hbq_rounds: int = 4, target: str = "index") -> dict:
    """An official C2I checkpoint as a ``GeneratorLitModule``-style checkpoint (live weights + ``ema1``/``ema2``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in OFFICIAL_C2I_KEYS if k not in ckpt]
    if missing:
        raise KeyError(f"{path} is not an official GRN C2I checkpoint: missing {missing}")
    live = load_official_c2i(path, "model", hbq_rounds, target)
    state = {f"net.{k}": v for k, v in live.state_dict().items()}
    for i, key in enumerate(("model_ema1", "model_ema2"), start=1):
        ema = EMA(load_official_c2i(path, key, hbq_rounds, target), 0.0)
        state.update({f"emas.ema{i}.{k}": v for k, v in ema.state_dict().items()})
    return {
        "hyper_parameters": {
            "net": infer_c2i_config(strip_prefix(ckpt["model"]), hbq_rounds, target),
            "tokenizer_ckpt": tokenizer_ckpt,
            "ema_decays": [0.9999, 0.9996],
        },
        "state_dict": state,
        "epoch": int(ckpt.get("epoch", 0)),
        "global_step": 0,
        "converted_from": str(path),
    }
