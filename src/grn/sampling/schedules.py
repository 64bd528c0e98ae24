"""Keep-probability schedules for the refinement loop.

A schedule gives the keep-probability ``t_i`` of step i out of T: step i feeds the network a map in which a share
~t_i of the tokens are predictions and the rest the initial noise, and after the step a share t_{i+1} of the new
predictions is kept. ``t_0 = 0`` (pure noise) and ``t_T = 1`` (the final sample). T may differ per sample
(complexity-aware sampling), so the functions take tensors.

* ``linear``: t_i = i / T (paper Alg. 3, the official C2I sampler).
* ``cosine``: t_i = 1 - cos(pi/2 · shift(i / T)), the T2I/T2V shape with an SNR shift.
* ``complexity_aware``: linear, with T chosen per sample from the prediction entropy after a warm-up
  (paper Eq. 9, see :func:`complexity_steps`).
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine", "complexity_aware")


def shift_keep_prob(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3-style shift towards more noise: n = 1 - t, n' = s·n / (1 + (s - 1)·n), t' = 1 - n'."""
    n = 1.0 - t
    return 1.0 - shift * n / (1.0 + (shift - 1.0) * n)


def keep_prob(step: int | torch.Tensor, total: torch.Tensor, schedule: str = "linear", snr_shift: float = 1.0) -> torch.Tensor:
    """Keep-probability of ``step`` out of ``total`` steps, per sample: ``total`` ``[B]`` -> float64 ``[B]``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    total = torch.as_tensor(total, dtype=torch.float64)
    u = (torch.as_tensor(step, dtype=torch.float64, device=total.device) / total).clamp(0.0, 1.0)
    if schedule == "cosine":
        t = 1.0 - torch.cos(math.pi / 2 * shift_keep_prob(u, snr_shift))
        t = torch.where(u >= 1.0, torch.ones_like(t), t)  # exactly 1 at the end despite rounding
    else:
        t = u
    return torch.where(u <= 0.0, torch.zeros_like(t), t)


def keep_probs(num_steps: int, schedule: str = "linear", snr_shift: float = 1.0) -> torch.Tensor:
    """The whole table ``[num_steps + 1]`` (float64) from 0 to 1 for a fixed number of steps."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return keep_prob(torch.arange(num_steps + 1), torch.full((num_steps + 1,), float(num_steps)), schedule, snr_shift)


def complexity_steps(entropy: torch.Tensor, k: float, b: float, t_min: int, t_max: int) -> torch.Tensor:
    """Paper Eq. 9: the step count of each sample, ``clip(round(k · H + b), t_min, t_max)``, from its mean
    normalised prediction entropy H (Eq. 8) after the warm-up. ``entropy`` ``[B]`` -> int64 ``[B]``.

    Simple samples (low entropy) get fewer steps; with ``k = 0`` every sample gets ``b`` steps.
    """
    return torch.round(k * entropy.double() + b).clamp(t_min, t_max).long()
