"""3-D rotary position embedding of the T2I/T2V network (facts §4.2).

Every token has a position ``(time, height, width)``; the head dim's rotation pairs are split
``[time n | height n | width rest]`` with ``n = (head_dim / 2) // 3`` (64 pairs -> 21 | 21 | 22), each axis with its
own frequencies ``1 / 10000^(i / n_axis)``, pairs adjacent ``(x[2j], x[2j+1])``.

Positions (one sequence may hold text, the pt token and visual tokens of several samples):

* text token p of a caption: ``(p, 0, 0)``;
* the pt (keep-probability) token: ``(512, 0, 0)``;
* visual token (f, i, j) of a ``T × h × w`` latent: ``(600 + f, round(i · uph / h), round(j · upw / w))`` where
  ``(uph, upw)`` spans the largest grid of the sample's aspect-ratio template, so positions are
  *resolution-normalised*: a 64-wide and a 16-wide image cover the same range (0..127 in steps of 2 or ~8).

Angles are computed in float32 like the official tables, so official weights see the same rotations.
"""

from __future__ import annotations

import math

import torch

PT_TIME_POSITION = 512  # the pt token sits at text position 512 (official ``freqs_text[512]``)
VISUAL_TIME_OFFSET = 600  # visual frame f has time position 600 + f (official ``preserve_1d_length``)
MAX_GRID_HEIGHT = 1800 // 8  # 225: the official table height; the extreme template 3:1 gives 225 × 75
EXTREME_H_DIV_W = 3.0

# Official aspect-ratio templates (h / w) of the dynamic-resolution buckets (facts §4.6).
H_DIV_W_TEMPLATES = (3.0, 2.5, 2.0, 1.777, 1.5, 1.333, 1.16, 1.0, 0.862, 0.75, 0.666, 0.562, 0.5, 0.4, 0.333)


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs per axis ``(time, height, width)`` for ``head_dim`` (128 -> (21, 21, 22))."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3-D RoPE needs an even head_dim >= 6, got {head_dim}")
    pairs = head_dim // 2
    n = pairs // 3
    return n, n, pairs - 2 * n


def nearest_template(h_div_w: float) -> float:
    """The official aspect-ratio template closest to ``h_div_w`` (by absolute difference)."""
    return min(H_DIV_W_TEMPLATES, key=lambda r: abs(r - h_div_w))


def normalised_extent(h_div_w_template: float) -> tuple[int, int]:
    """``(uph, upw)``: the position range a sample of this aspect-ratio template spans (square: 129 × 129)."""
    if not 0 < h_div_w_template <= EXTREME_H_DIV_W:
        raise ValueError(f"aspect ratio h/w must be in (0, {EXTREME_H_DIV_W}], got {h_div_w_template}")
    area = MAX_GRID_HEIGHT * (MAX_GRID_HEIGHT / EXTREME_H_DIV_W)
    upw = math.sqrt(area / h_div_w_template)
    return int(h_div_w_template * upw), int(upw)


def visual_positions(
    frames: int, height: int, width: int, h_div_w_template: float | None = None, frame_offset: int = 0
) -> torch.Tensor:
    """Positions ``[frames·height·width, 3]`` (float32) of a latent in (t, h, w) row-major order.

    ``h_div_w_template``: the sample's aspect-ratio template; default the template nearest to ``height / width``.
    """
    ratio = nearest_template(height / width) if h_div_w_template is None else h_div_w_template
    uph, upw = normalised_extent(ratio)
    if height > uph or width > upw:
        raise ValueError(f"a {height}×{width} latent exceeds the position grid {uph}×{upw} of aspect ratio {ratio}")
    # float32 products rounded half-to-even, as the official ``(arange(n) * (up / n)).round()``
    hp = (torch.arange(height) * (uph / height)).round()
    wp = (torch.arange(width) * (upw / width)).round()
    tp = torch.arange(frames, dtype=torch.float32) + VISUAL_TIME_OFFSET + frame_offset
    grid = torch.stack(torch.meshgrid(tp, hp, wp, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3)


def text_positions(length: int) -> torch.Tensor:
    """Positions ``[length, 3]`` of a caption's tokens: ``(p, 0, 0)``."""
    pos = torch.zeros(length, 3)
    pos[:, 0] = torch.arange(length, dtype=torch.float32)
    return pos


def pt_position() -> torch.Tensor:
    """Position ``[1, 3]`` of the pt token."""
    return torch.tensor([[float(PT_TIME_POSITION), 0.0, 0.0]])


def rope3d_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[..., head_dim]`` (each angle repeated for its pair) from positions ``[..., 3]``.

    The layout fits :func:`grn.models.layers.apply_rope` (adjacent pairs).
    """
    freqs = []
    for n in axis_pairs(head_dim):
        freqs.append(1.0 / theta ** (torch.arange(n, dtype=torch.float32, device=positions.device) / n))
    pos = positions.float()
    angles = torch.cat([pos[..., a : a + 1] * f for a, f in enumerate(freqs)], dim=-1)  # [..., head_dim / 2]
    angles = angles.repeat_interleave(2, dim=-1)
    return angles.cos(), angles.sin()
