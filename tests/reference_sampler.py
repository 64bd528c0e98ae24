"""Plain restatements of the refinement loops, for replay-parity tests of :mod:`grn.sampling`.

Written from the facts, not from ``grn.sampling``:

* :func:`official_c2i_sample`: the official C2I ``Denoiser.generate`` (facts §3.5; official update §E1): one noise
  map ``y_rand`` drawn once; every step runs separate conditional and unconditional passes over the *whole* batch
  (finished samples included, as the official loop does), interval or power-cos guidance, ``logits / τ``, a
  categorical draw of every token, then ``m ~ Bernoulli(t_next)`` and ``z = m ? ŷ : y_rand``. Schedules: linear
  (``linspace(0, 1, steps + 1)`` in float32, as the official), cosine, and ``complexity_aware`` (§E1: decision at
  step ``wp`` from the base-2 normalised entropy of the conditional logits, D = round(clip(k·H + b, Tmin − wp,
  steps − wp)), t_next = wp/steps + (1 − wp/steps)/D·(i + 1 − wp), τ·clip((D − 10)/40 + 0.5, 0.5, 1), finished
  samples (t ≥ 0.99) frozen).
* :func:`plain_refine`: the project's documented variants of the same loop (docs/sampler.md), each written the
  obvious way: cosine keep-probabilities, confidence selection (keep the round(t·N) most probable draws), the
  mask-based baseline (a kept token is frozen; the kept set grows to an expected share t), region re-generation
  (``known`` outside ``region``, the network told ``t_in = share given + share generated · t``).

Random draws come from one ``torch.Generator`` in the order the official loop makes them: the noise map once, then
per step the categorical draw of every token of the batch and the keep draw of every token of the batch. The
categorical draw is written as Gumbel-max over uniforms ``u`` (the same distribution as softmax + multinomial) so that
the draws can be replayed. Every network input is recorded in ``inputs`` (``[(z, t, y)]`` per pass) and every draw
in ``draws``.
"""

from __future__ import annotations

import math

import torch


def _gumbel_draw(logits: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.rand(logits.shape, generator=generator)
    g = -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
    return (logits + g).argmax(dim=1), u


def _entropy2(logits: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of -Σ p log2 p / log2 K of softmax(logits) over dim 1 -> [B] (p = 0 contributes 0)."""
    p = torch.softmax(logits.double(), dim=1)
    h = -torch.special.xlogy(p, p).sum(1) / math.log(2.0) / math.log2(logits.shape[1])
    if where is None:
        return h.flatten(1).mean(1)
    w = where.expand_as(h).double()
    return (h * w).flatten(1).sum(1) / w.flatten(1).sum(1)


def _guide(cond, uncond, t, cfg, interval, power):
    """Official CFG: power-cos when ``power`` is given, else the interval rule (t per sample, float32)."""
    view = (-1,) + (1,) * (cond.dim() - 1)
    if power is not None:
        w = (1 - torch.cos(t ** power * math.pi)) / 2
        return cond + cfg * w.view(view) * (cond - uncond)
    lo, hi = interval
    active = (t < hi) & ((t > lo) if lo != 0 else torch.ones_like(t, dtype=torch.bool))
    s = torch.where(active, torch.tensor(float(cfg)), torch.tensor(1.0))
    return uncond + s.view(view) * (cond - uncond)


@torch.no_grad()
def official_c2i_sample(net, y, num_levels, label_shape, null, generator, steps=50, cfg=1.0, interval=(0.0, 1.0),
                        power=None, tau=1.0, method="linear", wp=5, k=700.0, b=-620.0, tmin=20):
    """The official C2I loop. Returns ``(labels, inputs, info)``; ``inputs`` holds the conditional pass's
    ``(z, t, y)`` of every step (all samples), ``info`` the per-sample ``total`` steps (complexity-aware)."""
    bsz = y.shape[0]
    shape = (bsz, *label_shape)
    rand_labels = torch.randint(0, num_levels, shape, generator=generator)
    z = rand_labels
    timesteps = torch.linspace(0.0, 1.0, steps + 1)
    inputs, info = [], {}
    t_next = None
    for i in range(steps):
        if method == "complexity_aware":
            t = torch.zeros(bsz) if i == 0 else t_next
        elif method == "cosine":
            t = (1 - torch.cos(torch.pi / 2 * timesteps[i])).expand(bsz)
            t_next = (1 - torch.cos(torch.pi / 2 * timesteps[i + 1])).expand(bsz)
        else:
            t, t_next = timesteps[i].expand(bsz), timesteps[i + 1].expand(bsz)
        inputs.append((z.clone(), t.clone(), y.clone()))
        cond = net(z, t, y).float()
        cur_tau = torch.full((bsz,), float(tau))
        if method == "complexity_aware":
            if i == wp:
                h = _entropy2(cond)
                d = (k * h.float() + b).clip(tmin - wp, steps - wp).round()
                info["total"] = (d + wp).long()
                info["entropy"] = h
            if i < wp:
                t_next = torch.full((bsz,), (i + 1) / steps)
            else:
                cur_tau = tau * ((d - 10) / 40 + 0.5).clip(0.5, 1.0)
                t_next = wp / steps + (1 - wp / steps) / d * (i + 1 - wp)
            not_finished = t < 0.99
        uncond = net(z, t, torch.full_like(y, null)).float()
        logits = _guide(cond, uncond, t, cfg, interval, power) / cur_tau.view(-1, *([1] * len(label_shape)), 1)
        pred, _ = _gumbel_draw(logits, generator)
        m = torch.rand(shape, generator=generator) < t_next.view(-1, *([1] * len(label_shape)))
        if method == "complexity_aware":
            nf = not_finished.view(-1, *([1] * len(label_shape)))
            z = torch.where(nf & m, pred, z)
            z = torch.where(nf & ~m, rand_labels, z)
        else:
            z = torch.where(m, pred, rand_labels)
    return z, inputs, info


def _top(score: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """bool mask of the count[b] highest scores of each sample, ties broken by position (lowest first)."""
    out = torch.zeros_like(score, dtype=torch.bool)
    for b in range(score.shape[0]):  # a reference: per-sample loop on purpose
        order = torch.sort(score[b].flatten(), descending=True, stable=True).indices[: int(count[b])]
        out[b].view(-1)[order] = True
    return out


@torch.no_grad()
def plain_refine(net, y, num_levels, label_shape, null, generator, steps, cfg=1.0, interval=(0.0, 1.0), tau=1.0,
                 schedule="linear", shift=1.0, selection="random", revise=True, known=None, region=None,
                 pt_over_region=False):
    """The documented variants of Alg. 3 (see the module docstring). Returns ``(labels, inputs)``.
    ``pt_over_region``: the network is told t itself, the share over the generated tokens (the official
    first-frame I2V, update §B7), instead of the share of real tokens in the whole map."""
    bsz = y.shape[0]
    shape = (bsz, *label_shape)
    view = (-1,) + (1,) * len(label_shape)

    def t_of(i):
        u = i / steps
        if schedule == "cosine":
            n = 1 - u
            u_s = 1 - shift * n / (1 + (shift - 1) * n)
            return 1.0 if i >= steps else (0.0 if i == 0 else 1 - math.cos(math.pi / 2 * u_s))
        return u

    noise = torch.randint(0, num_levels, shape, generator=generator)
    gen_mask = torch.ones(shape, dtype=torch.bool) if region is None else region.expand(shape)
    given = torch.zeros(bsz, dtype=torch.float64) if region is None else 1 - gen_mask.flatten(1).double().mean(1)
    base = noise if known is None else torch.where(gen_mask, noise, known)
    z = base
    frozen = torch.zeros(shape, dtype=torch.bool)
    inputs = []
    for i in range(steps):
        t, t_next = t_of(i), t_of(i + 1)
        t_in = torch.full((bsz,), float(t)) if pt_over_region else (given + (1 - given) * t).float()
        inputs.append((z.clone(), t_in.clone(), y.clone()))
        cond = net(z, t_in, y).float()
        lo, hi = interval
        s = cfg if (t < hi and (lo == 0 or t > lo)) else 1.0
        if s != 1.0:
            uncond = net(z, t_in, null).float()
            logits = uncond + s * (cond - uncond)
        else:
            logits = cond
        logits = logits / tau
        pred, _ = _gumbel_draw(logits, generator)
        if selection == "random":
            u = torch.rand(shape, generator=generator)
            if revise:
                keep = u < t_next
            else:  # grow the frozen set: a not-yet-kept token joins with p = (t_next - t) / (1 - t)
                keep = frozen | (u < (t_next - t) / (1 - t))
        else:  # confidence: the round(t_next · N) draws of highest probability
            conf = torch.log_softmax(logits, dim=1).gather(1, pred.unsqueeze(1)).squeeze(1)
            n = gen_mask.flatten(1).sum(1)
            target = torch.round(t_next * n.double()).long()
            score = conf.masked_fill(~gen_mask, float("-inf"))
            if revise:
                keep = _top(score, target)
            else:
                have = (frozen & gen_mask).flatten(1).sum(1)
                keep = frozen | _top(score.masked_fill(frozen, float("-inf")), (target - have).clamp_min(0))
        if t_next >= 1:
            keep = torch.ones_like(keep)
        keep = keep & gen_mask
        new = torch.where(keep, pred, base)
        if not revise:
            new = torch.where(frozen, z, new)
            frozen = keep
        z = torch.where(gen_mask, new, base)
    return z, inputs
