"""Real offline media that ships inside the installed ``scikit-image`` package, read once: its colour photos
(:func:`raw_photo`, :func:`load_photos`) and its tiny GIF (:func:`raw_gif`, :func:`load_gif_frames`).

Used by the in-memory tokenizer sets (:mod:`grn.datamodules.photos`) and the built-in shard sets
(:mod:`grn.datamodules.builtin`).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "COLOUR_PHOTOS",
    "DEFAULT_VAL_PHOTOS",
    "GIF_PATH",
    "load_gif_frames",
    "load_photos",
    "raw_gif",
    "raw_photo",
]

log = logging.getLogger(__name__)

# skimage.data colour photographs (cat is chelsea again, so it is not listed; colorwheel/logo are drawings)
COLOUR_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "motorcycle_left",
)
DEFAULT_VAL_PHOTOS = ("chelsea", "coffee")


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


GIF_PATH = skimage_data_dir() / "no_time_for_that_tiny.gif"


@lru_cache(maxsize=32)
def raw_photo(name: str) -> np.ndarray:
    """One skimage photo as ``uint8 [H, W, C]`` (C = 1 for grey, 3 for colour), read once."""
    from skimage import data

    if (
        name == "motorcycle_left"
    ):  # only reachable through stereo_motorcycle(), which also loads a disparity map
        from skimage.io import imread

        array = imread(skimage_data_dir() / "motorcycle_left.png")
    else:
        loader = getattr(data, name, None)
        if loader is None or not callable(loader) or name.startswith("_"):
            raise ValueError(
                f"unknown skimage photo {name!r}; use a skimage.data image name, e.g. {COLOUR_PHOTOS}"
            )
        array = loader()
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ValueError(f"skimage photo {name!r} is {array.dtype}, expected uint8 pixels")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"skimage photo {name!r} has shape {array.shape}, expected [H, W] or [H, W, C]")
    array = array[:, :, :3]  # drops the alpha channel of RGBA images
    array.setflags(write=False)
    return array


def _to_unit_tensor(array: np.ndarray) -> Tensor:
    """``uint8 [..., H, W, C]`` → float32 ``[..., C, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.array(array, copy=True)).to(torch.float32).movedim(-1, -3) / 255.0


def _resize_short_side(x: Tensor, short_side: int | None) -> Tensor:
    """Resize ``[N, C, H, W]`` so that ``min(H, W) == short_side`` (antialiased bicubic), clamped to [0, 1]."""
    if short_side is None:
        return x
    h, w = x.shape[-2:]
    scale = short_side / min(h, w)
    size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
    if size == (h, w):
        return x
    # antialias only matters when shrinking; bicubic overshoots a little, hence the clamp
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=scale < 1).clamp_(0, 1)


def load_photos(names, short_side: int | None = 256, grey: str = "rgb") -> list[Tensor]:
    """The named skimage photos as float32 ``[3, H, W]`` tensors in [-1, 1], shorter side ``short_side``.

    ``grey``: ``"rgb"`` replicates grey photos to three channels, ``"skip"`` leaves them out (logged).
    """
    if grey not in ("rgb", "skip"):
        raise ValueError(f"grey must be 'rgb' or 'skip', got {grey!r}")
    photos = []
    for name in names:
        array = raw_photo(str(name))
        if array.shape[-1] == 1:
            if grey == "skip":
                log.info("photos: skipping grey photo %s (grey=skip)", name)
                continue
            array = np.repeat(array, 3, axis=-1)
        x = _resize_short_side(_to_unit_tensor(array)[None], short_side)[0]
        photos.append(x * 2.0 - 1.0)
    return photos


@lru_cache(maxsize=1)
def raw_gif() -> tuple[np.ndarray, tuple[float, ...]]:
    """The GIF's frames as ``uint8 [T, H, W, 3]`` (24 × 25 × 14 × 3) and each frame's duration in ms (100 where
    the file gives none), read once."""
    from PIL import Image, ImageSequence

    if not GIF_PATH.is_file():
        raise FileNotFoundError(f"{GIF_PATH} is missing: reinstall scikit-image (it ships this file)")
    with Image.open(GIF_PATH) as im:
        durations = tuple(float(f.info.get("duration", 100)) for f in ImageSequence.Iterator(im))
        frames = np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(im)])
    frames.setflags(write=False)
    return frames, durations


def load_gif_frames(short_side: int | None = 32) -> Tensor:
    """The skimage GIF as float32 ``[3, T, H, W]`` in [-1, 1] (T = 24), shorter side ``short_side``."""
    frames = _resize_short_side(_to_unit_tensor(raw_gif()[0]), short_side)  # [T, 3, H, W]
    return (frames * 2.0 - 1.0).transpose(0, 1).contiguous()
