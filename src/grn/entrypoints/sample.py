"""``python sample.py ckpt=<generator.ckpt> classes=[3,3,7] seed=0 out=x.png``: generate images to a PNG.

Text: ``python sample.py ckpt=<t2i or t2v .ckpt> prompts='["a handwritten seven"]' out=x.png`` (T2I) or
``mode=t2v frames=9 out=x.mp4`` (clips side by side in one MP4 at ``fps``); ``mode=i2v image=<first frame>``
generates the rest of a clip from its first frame.

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
from omegaconf import DictConfig

from grn.entrypoints.common import CONF_DIR
from grn.entrypoints.errors import cli_errors
from grn.entrypoints.validate import validate_sample
from grn.sampling.config import SamplerConfig

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
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read {path} as an image: {err}") from err
    x = torch.from_numpy(np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0)
    x = x.unsqueeze(0) if grey else x.permute(2, 0, 1)
    return x.unsqueeze(0) if grey else x.unsqueeze(0) * 2 - 1


def write_mp4(videos: torch.Tensor, path: Path, fps: float, nrow: int) -> Path:
    """Clips ``[B, 3, T, H, W]`` in [-1, 1] -> one MP4 (the clips tiled in a grid), written atomically."""
    from torchvision.utils import make_grid

    from grn.datamodules.video import encode_mp4
    from grn.io import atomic_write_bytes

    frames = []
    for t in range(videos.shape[2]):  # a loop over frames, once per output file
        grid = make_grid(to_unit(videos[:, :, t]), nrow=nrow, padding=2, pad_value=0.5)
        frames.append((grid.permute(1, 2, 0) * 255).round().to(torch.uint8))
    stack = torch.stack(frames).numpy()
    stack = stack[:, : stack.shape[1] // 2 * 2, : stack.shape[2] // 2 * 2]  # yuv420p needs even sides
    return atomic_write_bytes(encode_mp4(stack, fps), path)


def run_text(cfg: DictConfig) -> Path:
    from torchvision.utils import save_image

    from grn.pipeline import GRNPipeline

    prompts = [str(p) for p in cfg.prompts]
    if not prompts:
        raise ValueError("prompts is empty: give at least one caption, e.g. prompts='[\"a red apple\"]'")
    task = cfg.mode or ("i2v" if cfg.image else None)
    pipe = GRNPipeline.from_pretrained(cfg.ckpt, task=task or "t2i", tokenizer_ckpt=cfg.tokenizer_ckpt, ema=cfg.ema,
                                       device=cfg.device)
    if task is None and cfg.frames and int(cfg.frames) > 1:
        pipe.task = "t2v"
    sampler = SamplerConfig.build(cfg.sampler)
    image = str(cfg.image) if cfg.image else None  # read as the official pipeline reads first_frame_path
    out_images = pipe(prompts, seed=int(cfg.seed), height=int(cfg.height), width=int(cfg.width),
                      frames=int(cfg.frames) if cfg.frames else None, negative_prompt=str(cfg.negative_prompt),
                      image=image, progress=True, sampler=sampler).images
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nrow = int(cfg.nrow) if cfg.nrow else min(len(prompts), 8)
    if out_images.dim() == 5:
        if out.suffix.lower() != ".mp4":
            raise ValueError(f"clips are written as MP4: use out=<name>.mp4, got {out}")
        write_mp4(out_images, out, float(cfg.fps), nrow)
    else:
        save_image(to_unit(out_images), out, nrow=nrow, padding=2, pad_value=0.5)
    log.info("wrote %d sample(s) for %s to %s", len(prompts), prompts, out)
    return out


def run(cfg: DictConfig) -> Path:
    validate_sample(cfg)
    if cfg.get("prompts"):
        return run_text(cfg)
    from torchvision.utils import save_image

    from grn.pipeline import GRNPipeline

    classes = [int(c) for c in cfg.classes]  # whole numbers (validated)
    pipe = GRNPipeline.from_checkpoint(cfg.ckpt, tokenizer_ckpt=cfg.tokenizer_ckpt, ema=cfg.ema, device=cfg.device)
    sampler = SamplerConfig.build(cfg.sampler)
    init = mask = None
    if cfg.init is not None:
        init = load_picture(cfg.init, pipe.image_size)
        mask = load_picture(cfg.mask, pipe.image_size, grey=True) > 0.5
    images = pipe(classes, seed=int(cfg.seed), progress=True, init=init, mask=mask, sampler=sampler).images
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nrow = int(cfg.nrow) if cfg.nrow else min(len(classes), 16)
    save_image(to_unit(images), out, nrow=nrow, padding=2, pad_value=0.5)
    log.info("wrote %d image(s) for classes %s to %s", len(classes), classes, out)
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
@cli_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
