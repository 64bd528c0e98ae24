"""``python sample.py ckpt=<generator.ckpt> classes=[3,3,7] seed=0 out=x.png``: generate images to a PNG."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from grn.entrypoints.common import CONF_DIR
from grn.pipeline import GRNPipeline

log = logging.getLogger("grn.sample")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> [0, 1]."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def run(cfg: DictConfig) -> Path:
    classes = [int(c) for c in cfg.classes]
    if not classes:
        raise ValueError("classes is empty: give at least one class id, e.g. classes=[3,3,7]")
    pipe = GRNPipeline.from_checkpoint(cfg.ckpt, tokenizer_ckpt=cfg.tokenizer_ckpt, ema=cfg.ema, device=cfg.device)
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    sampler.pop("seed", None)
    images = pipe(classes, seed=int(cfg.seed), progress=True, **sampler).images
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
