"""Classifier-free guidance in logit space, active inside a keep-probability interval."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def guidance_scale(t: float, cfg_scale: float, cfg_interval: Sequence[float] = (0.0, 1.0)) -> float:
    """The scale applied at keep-probability ``t``.

    The official C2I rule: guidance is on when ``t < hi`` and (``lo == 0`` or ``t > lo``); outside it the scale is 1
    (no unconditional pass is needed there).
    """
    lo, hi = float(cfg_interval[0]), float(cfg_interval[1])
    if lo < 0 or hi > 1 or lo > hi:
        raise ValueError(f"cfg_interval must satisfy 0 <= lo <= hi <= 1, got {list(cfg_interval)}")
    active = t < hi and (lo == 0.0 or t > lo)
    return float(cfg_scale) if active else 1.0


def apply_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale · (cond - uncond)``."""
    return uncond + scale * (cond - uncond)
