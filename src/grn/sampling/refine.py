"""The GRN refinement sampler (paper Alg. 3), with the paper's variants.

Start from a uniformly random label map ``noise`` drawn once. At step i the network sees the current map with
its keep-probability t_i and predicts every token; a sample ``y_hat`` is drawn from the (guided, tempered)
logits, and the next map keeps a share t_{i+1} of the new predictions, the rest reverting to the initial noise:
``z_{i+1} = where(keep, y_hat, noise)``. Because the kept set is re-drawn at every step, tokens are filled,
refined and erased; at t_T = 1 the map is the sample.

Options: the keep-probability schedule (linear, cosine, complexity-aware with a per-sample step count from the
prediction entropy, paper Eq. 8-9), guidance (interval or power-cos), the selection of kept tokens (random or
by confidence), the mask-based baseline that never revises a kept token, the pt value the network is told
(``pt_value``: the schedule's nominal t_i, or the realised share of tokens the previous step kept, as the released
T2I/T2V sampler; official update §F3, §B7), and region re-generation: given
``known`` labels and a ``region`` mask, only the region is generated and every token outside it is returned
exactly as given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from grn.sampling.guidance import apply_guidance, guidance_scales
from grn.sampling.schedules import (
    SCHEDULES,
    complexity_steps,
    keep_prob,
    official_complexity_steps,
    official_keep_prob,
    official_temperature_factor,
)
from grn.sampling.selection import select_keep

# net(labels [B, C, h, w], t [B], y [B]) -> logits [B, K, C, h, w]
Network = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# the keep-probability the network is told: the schedule's nominal value, or the share the previous step kept
PT_VALUES = ("nominal", "realised")


@dataclass
class RefineResult:
    """labels: int64 ``[B, C, h, w]``; steps: int64 ``[B]``, the steps each sample took;
    stats: per-step float tensors ``[max steps]`` (means over the samples still refining) and per-sample ones."""

    labels: torch.Tensor
    steps: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RefineStep:
    """What one step of the loop did, handed to ``refine``'s ``on_step`` observer (the studio's live view).

    Every tensor covers the samples still refining (``rows``, ``A`` of them) in the network's label layout
    (bits for GRN_bit). They are the loop's own tensors, not copies, and are valid only during the call: an
    observer copies what it keeps and writes none of them.

    Attributes:
        index: the step i (0-based).
        rows: int64 ``[A]``, the batch rows of the samples still refining.
        keep_prob, next_keep_prob: float64 ``[A]``, the nominal t_i of this step's input, t_{i+1} of the next.
        cfg_scale: ``[A]``, the guidance scale applied at this step.
        entropy: float ``[A]``, Eq. 8 of each sample's conditional prediction (over the region, if any).
        inputs: int64 ``[A, C, ...]``, the map z_i the network saw.
        prediction: int64 ``[A, C, ...]``, the labels ŷ drawn from the (guided, tempered) logits.
        keep: bool ``[A, C, ...]``, the predictions the next map keeps (all of them on the last step).
        labels: int64 ``[A, C, ...]``, the next map z_{i+1} (the kept predictions, the initial noise
            elsewhere, the given labels outside a region).
        region: bool ``[A, C, ...]``, True where labels are generated (everywhere without a region).
    """

    index: int
    rows: torch.Tensor
    keep_prob: torch.Tensor
    next_keep_prob: torch.Tensor
    cfg_scale: torch.Tensor
    entropy: torch.Tensor
    inputs: torch.Tensor
    prediction: torch.Tensor
    keep: torch.Tensor
    labels: torch.Tensor
    region: torch.Tensor


def sample_categorical(
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    generator: torch.Generator | None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gumbel-max draw over dim 1 of ``[B, K, ...]`` logits at ``temperature`` -> int64 ``[B, ...]``.

    Same distribution as softmax + multinomial, without reshaping to 2-D; ``temperature == 0`` is argmax.
    ``temperature`` may be a float64/float ``[B]`` tensor (one per sample). ``uniform`` (the logits' shape, in
    [0, 1)) supplies the draw instead of ``generator``: the loop draws for the whole batch and passes the rows of
    the samples still refining, so a sample's draws do not depend on which others have finished.
    """
    if not isinstance(temperature, torch.Tensor) and temperature == 0:
        return logits.argmax(dim=1)
    u = uniform if uniform is not None else torch.rand(logits.shape, generator=generator, device=logits.device)
    gumbel = -torch.log(-torch.log(u.float().clamp(min=1e-20, max=1.0 - 1e-7)))
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(device=logits.device, dtype=torch.float32).view(-1, *([1] * (logits.dim() - 1)))
    return (logits.float() / temperature + gumbel).argmax(dim=1)


def normalized_entropy(logits: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """Paper Eq. 8: mean over tokens of the prediction entropy divided by log K -> ``[B]`` in [0, 1].

    ``where`` (bool, broadcastable to ``[B, C, h, w]``) restricts the mean to some tokens (a region).
    """
    logp = torch.log_softmax(logits.float(), dim=1)
    ent = -(logp.exp() * logp).sum(dim=1) / math.log(logits.shape[1])  # exp(logp)·logp is 0, never NaN, at p=0
    if where is None:
        return ent.flatten(1).mean(dim=1)
    w = where.expand_as(ent).float()
    return (ent * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)


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
    cfg_type: str = "interval",
    cfg_power: float = 1.0,
    temperature: float = 1.0,
    null_class: int | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    keep_prob_shift: float = 1.0,
    selection: str = "random",
    revise: bool = True,
    complexity_warmup_steps: int = 5,
    alpha: float = 50.0,
    k: float = 0.0,
    b: float = 50.0,
    complexity_min_steps: int = 10,
    complexity_max_steps: int = 50,
    known: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
    bit_target: str = "absolute",
    callback: Callable[[int], None] | None = None,
    pt_value: str = "nominal",
    pt_counts_known: bool = True,
    on_step: Callable[[RefineStep], None] | None = None,
) -> RefineResult:
    """Run the refinement loop.

    Args:
        net: the GRN network, ``net(labels, t, y) -> logits [B, K, C, h, w]``.
        y: int64 ``[B]`` class ids.
        label_shape: ``(C, h, w)`` of one label map, or ``(C, T, h, w)`` for video: every step is elementwise
            over the map, so a temporal ``region`` (e.g. all frames but the first) works the same way.
        num_levels: K, classes per label (2^M for index labels, 2 for bits).
        num_steps: T for the ``linear`` and ``cosine`` schedules.
        schedule: ``linear`` | ``cosine`` (with ``keep_prob_shift``) | ``official_t2iv`` (the released T2I/T2V
            targets, always ``num_steps`` passes, the output the last full prediction; :mod:`.schedules`) |
            ``complexity_aware``: the first
            ``complexity_warmup_steps`` follow a linear schedule over ``alpha`` steps, then each sample's step count becomes
            ``clip(round(k·H + b), complexity_min_steps, complexity_max_steps)`` from its Eq. 8 entropy H at the end of the warm-up.
        cfg_scale, cfg_interval, cfg_type, cfg_power: guidance (see :mod:`grn.sampling.guidance`); the
            unconditional pass (class ``null_class``) runs only for samples whose scale is not 1, batched with
            the conditional one. ``null_class`` may be an int64 ``[B]`` tensor: a per-sample unconditional id
            (text guidance passes each sample's negative prompt this way, see :mod:`grn.sampling.text`).
        temperature: tau; logits are divided by it before sampling.
        selection, revise: which predictions are kept (see :mod:`grn.sampling.selection`).
        known, region: region re-generation. ``known`` int64 ``[B, C, h, w]`` labels to keep, ``region`` bool
            broadcastable to it, True where to generate. Outside the region the output equals ``known``.
        bit_target: ``absolute`` (the network predicts labels) or ``relative`` (binary labels only: it predicts
            which input bits flip, so a prediction is ``input XOR sampled flip``; App. E.3).
        generator: the source of all randomness (same seed and device -> same samples).
        callback: called with the step index after each step (progress bars).
        pt_value: what the network is told as its input's keep-probability: ``nominal`` (the schedule's t_i; with
            ``known`` tokens ``known_share + (1 - known_share)·t_i``) or ``realised`` (the share of the region the
            previous step actually kept, 0 at step 0; given tokens do not count, as the released I2V sampler).
        pt_counts_known: with ``known`` tokens and ``pt_value=nominal``: True tells the network the share of real
            tokens in the whole map (``known_share + (1 - known_share)·t_i``, region re-generation); False tells it
            ``t_i``, the share over the region only (the official first-frame I2V, whose first frame is extra
            tokens outside the generated map, official update §B7).
        on_step: called after each step with a :class:`RefineStep` (the maps, the kept set, the entropy); it
            only sees what the loop computed anyway (no extra network pass), and costs nothing when None.
    Returns:
        :class:`RefineResult`; stats ``keep_prob``, ``cfg_scale``, ``entropy`` (Eq. 8 of the conditional
        prediction), ``kept_fraction`` (share of the region kept from the prediction for the next step),
        ``active`` (samples still refining), ``network_rows`` (samples through the network: conditional plus
        unconditional) per step, and per sample ``warmup_entropy`` (complexity-aware).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if pt_value not in PT_VALUES:
        raise ValueError(f"pt_value must be one of {PT_VALUES}, got {pt_value!r}")
    if bit_target not in ("absolute", "relative"):
        raise ValueError(f"bit_target must be 'absolute' or 'relative', got {bit_target!r}")
    if bit_target == "relative" and num_levels != 2:
        raise ValueError(f"bit_target='relative' needs binary labels (num_levels=2), got {num_levels}")
    if (known is None) != (region is None):
        raise ValueError("region re-generation needs both known labels and a region mask")
    device = y.device
    bsz = y.shape[0]
    shape = (bsz, *label_shape)
    aware = schedule == "complexity_aware"
    official = schedule == "complexity_aware_official"
    if aware and not 0 < complexity_warmup_steps < complexity_min_steps <= complexity_max_steps:
        raise ValueError(f"complexity-aware sampling needs 0 < complexity_warmup_steps < complexity_min_steps <= complexity_max_steps, got "
                         f"{complexity_warmup_steps}, {complexity_min_steps}, {complexity_max_steps}")
    if official and not 0 < complexity_warmup_steps < complexity_min_steps <= num_steps:
        raise ValueError(f"the official complexity-aware sampler needs 0 < complexity_warmup_steps < complexity_min_steps <= num_steps, got "
                         f"{complexity_warmup_steps}, {complexity_min_steps}, {num_steps}")
    # linear / cosine / ours: ``total`` steps per sample; official: ``post`` = D, the steps after the warm-up
    total = torch.full((bsz,), float(alpha if aware else num_steps), dtype=torch.float64, device=device)
    post = torch.full((bsz,), float(num_steps - complexity_warmup_steps), dtype=torch.float64, device=device)
    max_steps = int(complexity_max_steps if aware else num_steps)
    if max_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    lin_schedule = schedule if schedule in ("cosine", "official_t2iv") else "linear"

    def keep_at(step: int, rows: torch.Tensor) -> torch.Tensor:
        if official:
            return official_keep_prob(step, post[rows], complexity_warmup_steps, num_steps)
        return keep_prob(step, total[rows], lin_schedule, keep_prob_shift)

    # Alg. 3: one noise map, drawn once, that every token not kept reverts to. ``z`` is written in place below,
    # so it must never be ``noise`` itself.
    noise = torch.randint(0, num_levels, shape, generator=generator, device=device)
    if known is not None:
        if known.shape != shape:
            raise ValueError(f"known labels must be {list(shape)}, got {list(known.shape)}")
        selectable = region.to(device=device, dtype=torch.bool).expand(shape)
        known_share = 1.0 - selectable.flatten(1).float().mean(1).double()  # share of tokens given, per sample
        z = torch.where(selectable, noise, known)
        base = z.clone()  # what a token that is not kept becomes: the noise inside the region, known outside
    else:
        selectable = torch.ones(shape, dtype=torch.bool, device=device)
        known_share = torch.zeros(bsz, dtype=torch.float64, device=device)
        z = noise.clone()
        base = noise
    frozen = None if revise else torch.zeros(shape, dtype=torch.bool, device=device)
    if isinstance(null_class, torch.Tensor):
        null = null_class.to(device=device, dtype=y.dtype).expand(bsz)
    else:
        null = torch.full_like(y, null_class) if null_class is not None else None
    steps = torch.zeros(bsz, dtype=torch.long, device=device)
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    warm_entropy = torch.full((bsz,), float("nan"), device=device)
    tau = torch.full((bsz,), float(temperature), dtype=torch.float64, device=device)
    realised = torch.zeros(bsz, dtype=torch.float32, device=device)  # share of the region kept last step
    rec = {key: torch.zeros(max_steps, device=device) for key in ("keep_prob", "cfg_scale", "entropy", "kept_fraction", "active", "network_rows")}
    logits_shape = (bsz, num_levels, *label_shape)

    for i in range(max_steps):
        idx = (~done).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        everyone = idx.numel() == bsz
        t_now = keep_at(i, idx)  # nominal, over the region
        if pt_value == "realised":
            t_in = realised[idx]
        elif pt_counts_known:  # the share of real tokens in the whole input: the given ones count as real
            t_in = (known_share[idx] + (1.0 - known_share[idx]) * t_now).float()
        else:  # the share over the generated tokens only
            t_in = t_now.float()
        scale = guidance_scales(t_now, cfg_scale, cfg_interval, cfg_type, cfg_power)
        guided = (scale != 1.0).nonzero().squeeze(1)
        if guided.numel() and null is None:
            raise ValueError("guidance needs null_class (the unconditional class id)")
        z_a, y_a = z[idx], y[idx]
        if guided.numel():
            out = net(torch.cat([z_a, z_a[guided]]), torch.cat([t_in, t_in[guided]]), torch.cat([y_a, null[idx][guided]]))
            cond, uncond = out[: idx.numel()], out[idx.numel() :]
            logits = cond.float().clone()
            logits[guided] = apply_guidance(cond[guided].float(), uncond.float(), scale[guided])
        else:
            cond = logits = net(z_a, t_in, y_a)
        sel_a = selectable[idx]
        entropy = normalized_entropy(cond, sel_a if known is not None else None)
        if official and i == complexity_warmup_steps:  # §E1.4: this step's entropy sets D, its τ and its next t already
            warm_entropy[idx] = entropy
            post[idx] = official_complexity_steps(entropy, k, b, complexity_min_steps, complexity_warmup_steps, num_steps)
            tau[idx] = temperature * official_temperature_factor(post[idx])
        tau_a = tau[idx] if official and temperature != 0 else temperature
        # draws for the whole batch, used for the samples still refining (see sample_categorical)
        uniform = None
        if temperature != 0:
            uniform = torch.rand(logits_shape, generator=generator, device=device)
            uniform = uniform if everyone else uniform[idx]
        pred = sample_categorical(logits, tau_a, generator, uniform)
        if bit_target == "relative":
            pred = pred ^ z_a  # the net predicted flips of its input bits
        confidence = None
        if selection == "confidence":
            if isinstance(tau_a, torch.Tensor):
                t_conf = tau_a.float().clamp_min(1e-6).view(-1, *([1] * (logits.dim() - 1)))
            else:
                t_conf = max(temperature, 1e-6)
            logp = torch.log_softmax(logits.float() / t_conf, dim=1)
            confidence = logp.gather(1, pred.unsqueeze(1)).squeeze(1)

        if aware and i + 1 == complexity_warmup_steps:  # Eq. 9: the entropy after the warm-up sets the step count
            warm_entropy[idx] = entropy
            total[idx] = complexity_steps(entropy, k, b, complexity_min_steps, complexity_max_steps).double()
        t_next = keep_at(i + 1, idx)
        finishing = t_next >= 1.0
        keep_u = None
        if selection == "random":
            keep_u = torch.rand(shape, generator=generator, device=device)
            keep_u = keep_u if everyone else keep_u[idx]
        keep = select_keep(selection, t_next.float(), t_now.float(), confidence,
                           None if frozen is None else frozen[idx], sel_a, generator, keep_u)
        keep = keep | finishing.view(-1, *([1] * (len(shape) - 1)))  # t = 1: the whole prediction
        base_a = base if everyone else base[idx]
        if frozen is None:
            z_next = torch.where(keep, pred, base_a)
        else:  # frozen tokens keep their value; newly kept ones take the prediction
            z_next = torch.where(frozen[idx], z_a, torch.where(keep, pred, base_a))
            frozen[idx] = keep
        if known is not None:
            z_next = torch.where(sel_a, z_next, base_a)  # outside the region: exactly the given labels
        z[idx] = z_next
        steps[idx] = i + 1
        done[idx[finishing]] = True
        kept_share = (keep & sel_a).flatten(1).sum(1).float() / sel_a.flatten(1).sum(1).clamp_min(1)
        realised[idx] = kept_share

        n = float(idx.numel())
        rec["keep_prob"][i] = t_now.float().mean()
        rec["cfg_scale"][i] = scale.float().mean()
        rec["entropy"][i] = entropy.mean()
        rec["kept_fraction"][i] = kept_share.mean()
        rec["active"][i] = n
        rec["network_rows"][i] = n + guided.numel()  # samples through the network this step (cond + uncond)
        if on_step is not None:
            on_step(RefineStep(index=i, rows=idx, keep_prob=t_now, next_keep_prob=t_next, cfg_scale=scale,
                               entropy=entropy, inputs=z_a, prediction=pred, keep=keep, labels=z_next,
                               region=sel_a))
        if callback is not None:
            callback(i)

    used = int(steps.max())
    stats = {key: v[:used] for key, v in rec.items()}
    if aware or official:
        stats["warmup_entropy"] = warm_entropy
    return RefineResult(labels=z, steps=steps, stats=stats)
