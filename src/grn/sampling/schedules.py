"""Keep-probability schedules for the refinement loop.

A schedule gives the keep-probability ``t_i`` of step i out of T: step i feeds the network a map in which a share
~t_i of the tokens are predictions and the rest the initial noise, and after the step a share t_{i+1} of the new
predictions is kept. ``t_0 = 0`` (pure noise) and ``t_T = 1`` (the final sample). T may differ per sample
(complexity-aware sampling), so the functions take tensors.

* ``linear``: t_i = i / T (paper Alg. 3, the official C2I sampler).
* ``cosine``: t_i = 1 - cos(pi/2 · shift(i / T)), the T2I/T2V shape with an SNR shift.
* ``complexity_aware``: linear, with T chosen per sample from the prediction entropy after a warm-up
  (paper Eq. 9 as we read it, see :func:`complexity_steps`).
* ``official_t2iv``: the released T2I/T2V sampler (official update §F3): the target after step i is
  ``0.95 · (1 - cos(pi/2 · shift(min(1, (i + 1) / (T - 1)))))`` (:func:`official_t2iv_target`), so it never
  reaches 1; the loop always runs T passes and the output is the last full prediction (t_T = 1 here marks that).
  Pair it with ``pt_value=realised``, as the release does.
* ``complexity_aware_official``: the released C2I sampler (official update §E): linear i / steps for the first
  ``wp`` steps, then per sample ``wp/steps + (1 - wp/steps) · (i - wp) / D`` with D post-warm-up steps chosen from
  the entropy at step ``wp`` (see :func:`official_complexity_steps`, :func:`official_keep_prob`).
"""

from __future__ import annotations

import math

import torch

from grn.objective import shift_keep_prob

SCHEDULES = ("linear", "cosine", "official_t2iv", "complexity_aware", "complexity_aware_official")
OFFICIAL_T2IV_CEILING = 0.95  # the release's factor (0.999 in the old code, facts §4.5)


def official_t2iv_target(step: int | torch.Tensor, total: torch.Tensor | float, keep_prob_shift: float = 1.0) -> torch.Tensor:
    """The released T2I/T2V keep-probability target after step ``step`` (0-based) of ``total`` (Tmax) steps:
    ``0.95 · (1 - cos(pi/2 · shift(min(1, (step + 1) / (total - 1)), keep_prob_shift)))`` -> float64, broadcast over
    ``step`` / ``total``. Tmax = 50: 0.0005 after step 0, 0.95 from step 48 on."""
    total = torch.as_tensor(total, dtype=torch.float64)
    step = torch.as_tensor(step, dtype=torch.float64, device=total.device)
    u = ((step + 1.0) / (total - 1.0).clamp_min(1.0)).clamp(max=1.0)
    return OFFICIAL_T2IV_CEILING * (1.0 - torch.cos(math.pi / 2 * shift_keep_prob(u, keep_prob_shift)))


def keep_prob(step: int | torch.Tensor, total: torch.Tensor, schedule: str = "linear", keep_prob_shift: float = 1.0) -> torch.Tensor:
    """Keep-probability of ``step`` out of ``total`` steps, per sample: ``total`` ``[B]`` -> float64 ``[B]``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    total = torch.as_tensor(total, dtype=torch.float64)
    u = (torch.as_tensor(step, dtype=torch.float64, device=total.device) / total).clamp(0.0, 1.0)
    if schedule == "official_t2iv":  # the input of step i is the target after step i - 1; 1 at the end: ŷ itself
        t = torch.where(u >= 1.0, torch.ones_like(u), official_t2iv_target(torch.as_tensor(step) - 1, total, keep_prob_shift))
    elif schedule == "cosine":
        t = 1.0 - torch.cos(math.pi / 2 * shift_keep_prob(u, keep_prob_shift))
        t = torch.where(u >= 1.0, torch.ones_like(t), t)  # exactly 1 at the end despite rounding
    else:
        t = u
    return torch.where(u <= 0.0, torch.zeros_like(t), t)


def keep_probs(num_steps: int, schedule: str = "linear", keep_prob_shift: float = 1.0) -> torch.Tensor:
    """The whole table ``[num_steps + 1]`` (float64) from 0 to 1 for a fixed number of steps."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return keep_prob(torch.arange(num_steps + 1), torch.full((num_steps + 1,), float(num_steps)), schedule, keep_prob_shift)


def complexity_steps(entropy: torch.Tensor, k: float, b: float, complexity_min_steps: int, complexity_max_steps: int) -> torch.Tensor:
    """Paper Eq. 9: the step count of each sample, ``clip(round(k · H + b), complexity_min_steps, complexity_max_steps)``, from its mean
    normalised prediction entropy H (Eq. 8) after the warm-up. ``entropy`` ``[B]`` -> int64 ``[B]``.

    Simple samples (low entropy) get fewer steps; with ``k = 0`` every sample gets ``b`` steps.
    """
    return torch.round(k * entropy.double() + b).clamp(complexity_min_steps, complexity_max_steps).long()


def official_keep_prob(step: int, post_steps: torch.Tensor, complexity_warmup_steps: int, num_steps: int) -> torch.Tensor:
    """Keep-probability of ``step`` under the released C2I complexity-aware sampler, per sample -> float64 ``[B]``.

    ``t = wp/steps + (1 - wp/steps) · (step - wp) / D``, exactly 1 from ``step = wp + D`` on. ``post_steps`` (D,
    ``[B]``) is ``num_steps - wp`` until the decision, which makes the same formula the linear ``step / num_steps``
    of the warm-up.
    """
    d = torch.as_tensor(post_steps, dtype=torch.float64)
    start = complexity_warmup_steps / num_steps
    done = step - complexity_warmup_steps
    t = start + (1.0 - start) * done / d
    return torch.where(d <= done, torch.ones_like(t), t)


def official_complexity_steps(entropy: torch.Tensor, k: float, b: float, complexity_min_steps: int, complexity_warmup_steps: int,
                              num_steps: int) -> torch.Tensor:
    """The released decision (official update §E1.4): post-warm-up steps ``D = round(clip(k·H + b, Tmin - wp,
    steps - wp))`` from the base-2 normalised entropy H at step ``wp`` (``torch.round``: half to even).
    ``entropy`` ``[B]`` -> float64 ``[B]``; a sample takes ``wp + D`` network passes in all."""
    return (k * entropy.double() + b).clamp(complexity_min_steps - complexity_warmup_steps, num_steps - complexity_warmup_steps).round()


def official_temperature_factor(post_steps: torch.Tensor) -> torch.Tensor:
    """The released sampler's temperature factor from step ``wp`` on: ``clip((D - 10) / 40 + 0.5, 0.5, 1)``
    (D = 15 -> 0.625, D >= 30 -> 1). ``[B]`` -> float64 ``[B]``."""
    return ((torch.as_tensor(post_steps, dtype=torch.float64) - 10.0) / 40.0 + 0.5).clamp(0.5, 1.0)
