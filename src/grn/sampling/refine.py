"""The GRN refinement sampler (paper Alg. 3).

Start from a uniformly random label map ``z_0 = noise`` drawn once. At step i the network sees ``z_i`` with the
keep-probability t_i and predicts every token; a sample ``y_hat`` is drawn from the (guided, tempered) logits, and
each token of the next map is the new prediction with probability t_{i+1}, else the initial noise:
``z_{i+1} = where(rand < t_{i+1}, y_hat, noise)``. Because the kept set is re-drawn at every step, tokens are
filled, refined and erased; with t_T = 1 the last map is the sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from grn.sampling.guidance import apply_guidance, guidance_scale
from grn.sampling.schedules import keep_probs

# net(labels [B, C, h, w], t [B], y [B]) -> logits [B, K, C, h, w]
Network = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RefineResult:
    """labels: int64 ``[B, C, h, w]``; stats: per-step float tensors ``[T]`` (on the sampling device)."""

    labels: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def sample_categorical(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Gumbel-max draw over dim 1 of ``[B, K, ...]`` logits at ``temperature`` -> int64 ``[B, ...]``.

    Same distribution as softmax + multinomial, without reshaping to 2-D; ``temperature == 0`` is argmax.
    """
    if temperature == 0:
        return logits.argmax(dim=1)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(u.clamp_(min=1e-20, max=1.0 - 1e-7)))
    return (logits.float() / temperature + gumbel).argmax(dim=1)


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 8: mean over tokens of the prediction entropy divided by log K -> ``[B]`` in [0, 1]."""
    logp = torch.log_softmax(logits.float(), dim=1)
    ent = -(logp.exp() * logp).sum(dim=1)  # exp(logp)·logp is 0 where p underflows, never NaN
    return ent.flatten(1).mean(dim=1) / math.log(logits.shape[1])


@torch.no_grad()
def refine(
    net: Network,
    y: torch.Tensor,
    label_shape: Sequence[int],
    num_levels: int,
    num_steps: int = 50,
    schedule: str = "linear",
    cfg_scale: float = 1.0,
    cfg_interval: Sequence[float] = (0.0, 1.0),
    temperature: float = 1.0,
    null_class: int | None = None,
    generator: torch.Generator | None = None,
    snr_shift: float = 1.0,
    callback: Callable[[int], None] | None = None,
) -> RefineResult:
    """Run the refinement loop.

    Args:
        net: the GRN network, ``net(labels, t, y) -> logits [B, K, C, h, w]``.
        y: int64 ``[B]`` class ids.
        label_shape: ``(C, h, w)`` of one label map.
        num_levels: K, classes per label (2^M for index labels, 2 for bits).
        cfg_scale, cfg_interval: guidance; the unconditional branch (class ``null_class``) runs only on steps where
            the scale is not 1, batched with the conditional one.
        temperature: tau; logits are divided by it before sampling.
        generator: the source of all randomness (same seed and device -> same samples).
        callback: called with the step index after each step (progress bars).
    Returns:
        :class:`RefineResult` with labels ``[B, C, h, w]`` and per-step stats ``keep_prob``, ``cfg_scale``,
        ``entropy`` (mean Eq. 8 entropy of the conditional prediction) and ``kept_fraction`` (realised share of
        tokens taken from the prediction for the next step).
    """
    device = y.device
    b = y.shape[0]
    shape = (b, *label_shape)
    ts = keep_probs(num_steps, schedule, snr_shift)
    scales = [guidance_scale(float(ts[i]), cfg_scale, cfg_interval) for i in range(num_steps)]
    if any(s != 1.0 for s in scales) and null_class is None:
        raise ValueError("guidance needs null_class (the unconditional class id)")

    noise = torch.randint(0, num_levels, shape, generator=generator, device=device)
    z = noise
    entropy = torch.zeros(num_steps, device=device)
    kept = torch.zeros(num_steps, device=device)
    null = torch.full_like(y, null_class) if null_class is not None else None
    for i in range(num_steps):
        t = torch.full((b,), float(ts[i]), device=device)
        if scales[i] != 1.0:
            both = net(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, null]))
            cond, uncond = both.chunk(2)
            logits = apply_guidance(cond.float(), uncond.float(), scales[i])
        else:
            cond = logits = net(z, t, y)
        entropy[i] = normalized_entropy(cond).mean()
        pred = sample_categorical(logits, temperature, generator)
        if callback is not None:
            callback(i)
        if i == num_steps - 1:
            z = pred  # t_T = 1: the final map is the full prediction
            kept[i] = 1.0
            break
        keep = torch.rand(shape, generator=generator, device=device) < float(ts[i + 1])
        kept[i] = keep.float().mean()
        z = torch.where(keep, pred, noise)
    stats = {
        "keep_prob": ts[:num_steps].float().to(device),
        "cfg_scale": torch.tensor(scales, device=device),
        "entropy": entropy,
        "kept_fraction": kept,
    }
    return RefineResult(labels=z, stats=stats)
