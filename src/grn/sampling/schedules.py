"""Keep-probability schedules for the refinement loop.

A schedule gives the keep-probabilities ``t_0 < t_1 < ... < t_T`` for T steps: step i feeds the network a map
in which a fraction ~t_i of the tokens are predictions and the rest the initial noise, and after the step a
fraction t_{i+1} of the new predictions is kept. ``t_0 = 0`` (pure noise) and ``t_T = 1`` (the final sample).
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")


def shift_keep_prob(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3-style shift towards more noise: n = 1 - t, n' = s·n / (1 + (s - 1)·n), t' = 1 - n'."""
    n = 1.0 - t
    return 1.0 - shift * n / (1.0 + (shift - 1.0) * n)


def keep_probs(num_steps: int, schedule: str = "linear", snr_shift: float = 1.0) -> torch.Tensor:
    """Keep-probabilities ``[num_steps + 1]`` (float64) from 0 to 1.

    * ``linear``: t_i = i / T (paper Alg. 3, the official C2I sampler).
    * ``cosine``: t_i = 1 - cos(pi/2 · shift(i / T)), the T2I/T2V shape with an optional SNR shift.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    if schedule == "linear":
        t = u
    elif schedule == "cosine":
        t = 1.0 - torch.cos(math.pi / 2 * shift_keep_prob(u, snr_shift))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    t[0], t[-1] = 0.0, 1.0
    return t
