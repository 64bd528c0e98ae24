"""Region re-generation's inputs: a pixel mask rounded up to whole tokens, and the ``known`` / ``region`` pair that
:func:`grn.sampling.refine.refine` takes, from an image (encoded) or from labels. Both pipelines and the studio use
these, so a mask means the same tokens everywhere."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_region(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """Pixel mask ``[B, 1, H, W]`` (nonzero = regenerate) -> bool token mask ``[B, 1, H/stride, W/stride]``: a
    token is regenerated if any pixel of its ``stride x stride`` patch is masked."""
    return F.max_pool2d(mask.float(), stride, stride) > 0


def region_condition(tokenizer: torch.nn.Module, batch: int, size: tuple[int, int], init: torch.Tensor | None,
                     mask: torch.Tensor | None, init_labels: torch.Tensor | None,
                     device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Region re-generation's ``(known index labels [B, d, h, w], region bool [B, 1, h, w])`` from ``init``
    pixels (encoded) or ``init_labels`` and a pixel ``mask`` of ``size`` (H, W); ``(None, None)`` without them."""
    if init is not None and init_labels is not None:
        raise ValueError("give init (pixels) or init_labels (tokens) for region re-generation, not both")
    source = init if init is not None else init_labels
    if (source is None) != (mask is None):
        raise ValueError("region re-generation needs both init (the image) and mask (where to regenerate)")
    if source is None:
        return None, None
    if mask.shape[-2:] != tuple(size) or (init is not None and init.shape[-2:] != tuple(size)):
        shown = list(init.shape) if init is not None else "init_labels"
        raise ValueError(f"init and mask must be {size[0]}x{size[1]}, got {shown} and {list(mask.shape)}")
    stride = tokenizer.spatial_stride
    if init is not None:
        known = tokenizer.encode(init.to(device), target="index")
    else:
        known = init_labels.to(device=device, dtype=torch.long)
        want = (tokenizer.latent_dim, size[0] // stride, size[1] // stride)
        if known.dim() != 4 or tuple(known.shape[1:]) != want:
            raise ValueError(f"init_labels must be [B, {want[0]}, {want[1]}, {want[2]}], got {list(known.shape)}")
    region = latent_region(mask.to(device), stride)
    return known.expand(batch, -1, -1, -1), region.expand(batch, -1, -1, -1)

