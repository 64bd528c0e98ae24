"""``python sample.py ckpt=<generator.ckpt> classes=[3,3,7] seed=0 out=x.png``: generate images to a PNG.

Region re-generation: ``init=<image> mask=<png>`` regenerates only where the mask is white (token-rounded),
optionally under new classes; every token outside it stays exactly as the tokenizer encoded ``init``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from PIL import Image
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from grn.entrypoints.common import CONF_DIR
from grn.pipeline import GRNPipeline

log = logging.getLogger("grn.sample")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> [0, 1]."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def load_picture(path: str | Path, size: int, grey: bool = False) -> torch.Tensor:
    """An image file -> ``[1, 3, size, size]`` in [-1, 1] (``grey``: ``[1, 1, size, size]`` in [0, 1])."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        img = Image.open(path).convert("L" if grey else "RGB")
    except OSError as err:
        raise ValueError(f"cannot read {path} as an image: {err}") from err
    x = torch.from_numpy(np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0)
    x = x.unsqueeze(0) if grey else x.permute(2, 0, 1)
    return x.unsqueeze(0) if grey else x.unsqueeze(0) * 2 - 1


def run(cfg: DictConfig) -> Path:
    classes = [int(c) for c in cfg.classes]
    if not classes:
        raise ValueError("classes is empty: give at least one class id, e.g. classes=[3,3,7]")
    if (cfg.init is None) != (cfg.mask is None):
        raise ValueError("region re-generation needs both init=<image> and mask=<png>")
    pipe = GRNPipeline.from_checkpoint(cfg.ckpt, tokenizer_ckpt=cfg.tokenizer_ckpt, ema=cfg.ema, device=cfg.device)
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    sampler.pop("seed", None)
    init = mask = None
    if cfg.init is not None:
        init = load_picture(cfg.init, pipe.image_size)
        mask = load_picture(cfg.mask, pipe.image_size, grey=True) > 0.5
    images = pipe(classes, seed=int(cfg.seed), progress=True, init=init, mask=mask, **sampler).images
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nrow = int(cfg.nrow) if cfg.nrow else min(len(classes), 16)
    save_image(to_unit(images), out, nrow=nrow, padding=2, pad_value=0.5)
    log.info("wrote %d image(s) for classes %s to %s", len(classes), classes, out)
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
