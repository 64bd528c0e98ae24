"""Helpers shared by the data-pipeline tests (importable: conftest puts this folder on sys.path)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from grn.datamodules.builtin import load_digits_split


def digit_png_samples(n: int, start: int = 0):
    """``n`` real digits as ``{"__key__", "png", "cls"}`` samples (16×16 RGB PNG), keys ``d000000``…"""
    x, y = load_digits_split("train", image_size=16)
    for i in range(start, start + n):
        arr = ((x[i].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        yield {"__key__": f"d{i:06d}", "png": buf.getvalue(), "cls": int(y[i])}


def tiny_tokenizer_ckpt(path, seed: int = 0, config: str = "tiny"):
    """A tiny random tokenizer (``conf/model/tokenizer/<config>.yaml``) saved in the TokenizerLitModule checkpoint
    layout (hyper_parameters + weights)."""
    from pathlib import Path

    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from grn.entrypoints.common import CONF_DIR
    from grn.lit_modules.ema import EMA

    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "tokenizer" / f"{config}.yaml"))
    torch.manual_seed(seed)
    tok = instantiate(cfg)
    state = {f"tokenizer.{k}": v for k, v in tok.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in EMA(tok, 0.0).state_dict().items()})
    torch.save({"hyper_parameters": {"tokenizer": cfg}, "state_dict": state}, path)
    return path
