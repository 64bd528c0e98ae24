"""Classifier-free guidance in logit space: ``uncond + s · (cond - uncond)`` with a per-sample scale s.

Two ways to set s from the keep-probability t (facts §3.5):

* ``interval`` (the paper's): s = ``cfg_scale`` when ``t < hi`` and (``lo == 0`` or ``t > lo``), else 1;
* ``power_cos`` (the official code's undocumented variant): s = 1 + ``cfg_scale`` · (1 - cos(pi · t^p)) / 2, i.e.
  ``cond + cfg · w(t) · (cond - uncond)`` — note the effective scale is 1 + cfg·w, not cfg.

Wherever s = 1 no unconditional pass is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

GUIDANCE_TYPES = ("interval", "power_cos")


def check_interval(cfg_interval: Sequence[float]) -> tuple[float, float]:
    lo, hi = float(cfg_interval[0]), float(cfg_interval[1])
    if lo < 0 or hi > 1 or lo > hi:
        raise ValueError(f"cfg_interval must satisfy 0 <= lo <= hi <= 1, got {list(cfg_interval)}")
    return lo, hi


def guidance_scales(
    t: torch.Tensor,
    cfg_scale: float,
    cfg_interval: Sequence[float] = (0.0, 1.0),
    cfg_type: str = "interval",
    cfg_power: float = 1.0,
) -> torch.Tensor:
    """Per-sample guidance scale at keep-probabilities ``t`` ``[B]`` -> float64 ``[B]``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if cfg_type == "interval":
        lo, hi = check_interval(cfg_interval)
        active = (t < hi) & ((t > lo) if lo != 0.0 else torch.ones_like(t, dtype=torch.bool))
        return torch.where(active, torch.full_like(t, float(cfg_scale)), torch.ones_like(t))
    if cfg_type == "power_cos":
        w = (1.0 - torch.cos(math.pi * t.clamp(0, 1) ** cfg_power)) / 2.0
        return 1.0 + float(cfg_scale) * w
    raise ValueError(f"unknown cfg_type {cfg_type!r}; choose one of {GUIDANCE_TYPES}")


def guidance_scale(t: float, cfg_scale: float, cfg_interval: Sequence[float] = (0.0, 1.0)) -> float:
    """The interval rule at one keep-probability (scalar convenience)."""
    return float(guidance_scales(torch.tensor([t]), cfg_scale, cfg_interval)[0])


def apply_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``uncond + scale · (cond - uncond)``; a tensor ``scale`` ``[B]`` broadcasts over the rest."""
    if isinstance(scale, torch.Tensor):
        scale = scale.to(cond.dtype).view(-1, *([1] * (cond.dim() - 1)))
    return uncond + scale * (cond - uncond)
