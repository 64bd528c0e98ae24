"""Pixels in the studio: model tensors <-> uint8 pictures, uploads checked and fitted to the model's size, the
painted mask of the editor, and the token grid a mask is rounded to, drawn over the picture.

Plain numpy / torch, no Gradio: :mod:`grn.studio.app` only wires these to components, and ``tests/studio``
tests them directly. Pictures are uint8 ``[H, W, 3]`` (RGB); model images are float ``[B, 3, H, W]`` in
[-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

DISPLAY_SIDE = 256  # pictures are shown at about this many pixels a side (nearest-neighbour, whole factors)
# the overlay's colours: the selected token cells are tinted, the grid lines drawn between cells
SELECT_RGB = np.array([255, 0, 255], dtype=np.float32)
GRID_RGB = np.array([40, 40, 40], dtype=np.uint8)


class StudioInputError(ValueError):
    """Something the person gave the page cannot be used; the message says what and how to fix it."""


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Model images ``[B, 3, H, W]`` (clips ``[B, 3, T, H, W]``) in [-1, 1] -> uint8 ``[B, (T,) H, W, 3]``."""
    unit = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    order = (0, 2, 3, 1) if unit.dim() == 4 else (0, 2, 3, 4, 1)
    return (unit.permute(*order) * 255).round().to(torch.uint8).numpy()


def from_uint8(picture: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float ``[1, 3, H, W]`` in [-1, 1] (:func:`to_uint8`'s inverse on one image)."""
    x = torch.from_numpy(np.ascontiguousarray(picture)).float().div(255.0)
    return x.permute(2, 0, 1).unsqueeze(0) * 2 - 1


def display_scale(size: int, side: int = DISPLAY_SIDE) -> int:
    """The whole upscaling factor that shows a ``size``-pixel image at about ``side`` pixels (at least 1)."""
    return max(1, side // max(1, int(size)))


def upscale(picture: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling by a whole ``factor`` (``[H, W, ...]`` -> ``[H·f, W·f, ...]``), so that
    every model pixel is a crisp block and :func:`fit_picture` recovers it exactly."""
    if factor == 1:
        return picture
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)


def as_rgb(array: np.ndarray, what: str = "the image") -> np.ndarray:
    """Any picture array (grey ``[H, W]``, ``[H, W, 1 | 3 | 4]``, uint8 or float in [0, 1] / [0, 255]) ->
    uint8 RGB ``[H, W, 3]``; transparency is composited over white (what the editor shows)."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise StudioInputError(f"{what} has shape {list(a.shape)}: expected a picture (height x width x RGB)")
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        if a.size and float(np.nanmax(a)) <= 1.0:
            a = a * 255.0
        a = np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255.0
        a = (a[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return a


def read_picture(path: str | Path) -> np.ndarray:
    """An uploaded file -> uint8 RGB ``[H, W, 3]``; a file that is no image is a :class:`StudioInputError`."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return as_rgb(np.asarray(img.convert("RGBA")), f"{path.name}")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
        if isinstance(err, StudioInputError):
            raise
        raise StudioInputError(
            f"{path.name} is not an image that can be read (PNG, JPEG, WebP, ...): upload a picture file"
        ) from err


def accepted_sizes(size: int) -> str:
    big = size * display_scale(size)
    return f"{size}x{size} or a whole multiple of it, such as {big}x{big}"


def fit_picture(picture: np.ndarray, size: int, what: str = "the image") -> np.ndarray:
    """A picture of the model's ``size`` (square), or a whole multiple of it (what the page shows), -> uint8
    ``[size, size, 3]`` by averaging each ``k x k`` block (exact for a picture the page upscaled). Another
    size is a :class:`StudioInputError` naming the accepted ones: a silent resize would hide which pixels
    became which tokens."""
    rgb = as_rgb(picture, what)
    h, w = rgb.shape[:2]
    if h != w or h % size:
        raise StudioInputError(
            f"{what} is {w}x{h} pixels; this model works on {accepted_sizes(size)} (square)"
        )
    k = h // size
    if k == 1:
        return rgb
    blocks = rgb.reshape(size, k, size, k, 3).astype(np.float32)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def fit_frame(picture: np.ndarray, height: int, width: int, what: str = "the image") -> np.ndarray:
    """A picture for a text model (any ``height x width``): the same rule as :func:`fit_picture`, per side
    (the picture must be ``height x width`` or the same whole multiple of both)."""
    rgb = as_rgb(picture, what)
    h, w = rgb.shape[:2]
    k = h // height if height else 0
    if k < 1 or h != k * height or w != k * width:
        raise StudioInputError(
            f"{what} is {w}x{h} pixels; give a {width}x{height} picture or a whole multiple "
            f"of it (e.g. {width * display_scale(max(height, width))}x"
            f"{height * display_scale(max(height, width))})"
        )
    if k == 1:
        return rgb
    return rgb.reshape(height, k, width, k, 3).astype(np.float32).mean(axis=(1, 3)).round().astype(np.uint8)


def painted(layer: np.ndarray | None, background: np.ndarray | None = None) -> np.ndarray | None:
    """Where one editor layer is painted -> bool ``[H, W]``: its alpha where it has one, else wherever it
    differs from ``background``; None for no layer."""
    if layer is None:
        return None
    a = np.asarray(layer)
    if a.ndim == 3 and a.shape[-1] == 4:
        return a[..., 3] > 0
    if background is None:
        raise StudioInputError(
            "the editor sent a layer without transparency and no background to compare with"
        )
    rgb, bg = as_rgb(a, "the painted layer"), as_rgb(background, "the image")
    if rgb.shape != bg.shape:
        raise StudioInputError(f"the painted layer is {list(rgb.shape)} but the image {list(bg.shape)}")
    return (rgb != bg).any(axis=-1)


def editor_mask(
    layers: list[np.ndarray] | None,
    size: tuple[int, int],
    background: np.ndarray | None = None,
    composite: np.ndarray | None = None,
) -> np.ndarray:
    """The editor's painted layers (or, without layers, where ``composite`` differs from ``background``) ->
    bool pixel mask ``[H, W]`` at the model's ``size`` (H, W): a model pixel is masked if any displayed pixel
    over it was painted (so the mask is rounded up, never down)."""
    masks = [m for m in (painted(layer, background) for layer in (layers or [])) if m is not None]
    if not masks and composite is not None and background is not None:
        masks = [painted(as_rgb(composite, "the painted image"), background)]
    height, width = size
    if not masks:
        return np.zeros((height, width), dtype=bool)
    mask = np.logical_or.reduce(masks)
    h, w = mask.shape
    if h % height or w % width or h // height != w // width:
        raise StudioInputError(
            f"the painted mask is {w}x{h} pixels; expected {width}x{height} or a whole multiple"
        )
    k = h // height
    return mask.reshape(height, k, width, k).any(axis=(1, 3))


def token_grid(mask: np.ndarray, stride: int) -> np.ndarray:
    """Pixel mask ``[H, W]`` -> bool token grid ``[H/stride, W/stride]``: a token is regenerated if any pixel
    of its patch is masked (:func:`grn.sampling.region.latent_region`, the rule the pipelines apply)."""
    from grn.sampling.region import latent_region

    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None, None]
    return latent_region(m, stride)[0, 0].numpy()


def grid_overlay(
    picture: np.ndarray, cells: np.ndarray | None, stride: int, factor: int, tint: float = 0.45
) -> np.ndarray:
    """The picture (model size) upscaled by ``factor`` with the token grid drawn on it (a line between cells)
    and the ``cells`` (bool ``[h, w]``, the regenerated tokens) tinted magenta -> uint8 ``[H·f, W·f, 3]``."""
    big = upscale(as_rgb(picture), factor).astype(np.float32)
    cell = stride * factor
    if cells is not None and np.any(cells):
        sel = upscale(np.asarray(cells, dtype=bool), cell)[: big.shape[0], : big.shape[1]]
        big[sel] = big[sel] * (1 - tint) + SELECT_RGB * tint
    out = big.round().astype(np.uint8)
    if cell >= 8:  # grid lines only where cells are big enough to see between them
        out[::cell, :] = GRID_RGB
        out[:, ::cell] = GRID_RGB
        out[-1, :] = GRID_RGB
        out[:, -1] = GRID_RGB
    return out


def tile(pictures: list[np.ndarray], columns: int, pad: int = 2, fill: int = 128) -> np.ndarray:
    """Pictures of one size in a grid (``columns`` wide, ``pad`` grey pixels between) -> one uint8 picture."""
    if not pictures:
        raise ValueError("nothing to tile")
    h, w = pictures[0].shape[:2]
    rows = -(-len(pictures) // columns)
    cols = min(columns, len(pictures))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for i, p in enumerate(pictures):
        r, c = divmod(i, columns)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = p
    return out
