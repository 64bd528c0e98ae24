"""The refinement objective's inputs, shared by every trainer (C2I and T2I/T2V): the keep-probability t drawn per
sample, its SD3-style shift, and the token map in which each label survives with probability t (facts §3.3, §4.4).

Pure functions over tensors; no Lightning. The sampler's schedules use :func:`shift_keep_prob` too (the cosine
schedule with ``keep_prob_shift``), so training and sampling shift t the same way.

Image-to-video training (official update §B1, §B10): :func:`draw_first_frame_condition` picks the clips that get
the first-frame condition (``i2v_ratio``), :func:`text_sample_losses` runs them in the official form.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["conditionable_clips", "draw_first_frame_condition", "first_frame_clips", "mix_with_noise",
           "mix_with_noise_and_mask", "realised_keep_prob", "sample_keep_prob", "sample_weights", "segment_mean",
           "shift_keep_prob", "text_sample_losses"]


def shift_keep_prob(keep_prob: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3-style shift towards more noise: with n = 1 - t, n' = s·n / (1 + (s - 1)·n), t' = 1 - n'.

    ``keep_prob`` any shape -> the same shape. ``shift`` 1 is the identity (up to rounding); the released T2I/T2V
    models were trained with 4 (median t' = 0.2 for uniform t).
    """
    n = 1.0 - keep_prob
    return 1.0 - shift * n / (1.0 + (shift - 1.0) * n)


def sample_keep_prob(batch: int, mean: float, std: float, device: torch.device | str,
                     generator: torch.Generator | None = None, shift: float | None = None) -> torch.Tensor:
    """The keep-probability of each training sample: ``[batch]`` float32.

    ``std > 0``: t = sigmoid(N(mean, std²)) (the official C2I recipe: mean -0.8, std 0.8); ``std <= 0``:
    t ~ U(0, 1) (the official T2I/T2V default). ``shift`` (None: none) then applies :func:`shift_keep_prob`; the
    C2I trainer passes None, so its draws are exactly the unshifted ones.
    """
    if std > 0:
        t = torch.sigmoid(torch.randn(batch, device=device, generator=generator) * std + mean)
    else:
        t = torch.rand(batch, device=device, generator=generator)
    return t if shift is None else shift_keep_prob(t, shift)


def mix_with_noise_and_mask(labels: torch.Tensor, keep_prob: torch.Tensor, num_levels: int,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each label stays with probability ``keep_prob[b]``, else becomes a fresh uniform label in ``[0, num_levels)``.

    labels ``[B, C, (T,) h, w]`` int64, keep_prob ``[B]`` -> ``(mixed int64, keep bool)``, both the labels'
    shape. The noise is drawn before the keep mask, in this order, so a seeded generator replays a training step
    exactly.
    """
    shape = labels.shape
    kp = keep_prob.view(-1, *([1] * (labels.dim() - 1)))
    noise = torch.randint(0, num_levels, shape, device=labels.device, generator=generator)
    keep = torch.rand(shape, device=labels.device, generator=generator) < kp
    return torch.where(keep, labels, noise), keep


def mix_with_noise(labels: torch.Tensor, keep_prob: torch.Tensor, num_levels: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`mix_with_noise_and_mask`'s mixed labels only (the same draws)."""
    return mix_with_noise_and_mask(labels, keep_prob, num_levels, generator)[0]


def realised_keep_prob(keep: torch.Tensor) -> torch.Tensor:
    """The share of kept labels of each sample: keep mask ``[B, ...]`` -> float32 ``[B]`` (the released T2I/T2V
    trainer's pt value, ``mask.float().mean()`` per sample, official update §C3), where the nominal value is the
    probability the mask was drawn with."""
    return keep.flatten(1).float().mean(1)


def segment_mean(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """The mean of ``values`` ``[N]`` over each segment: ``segment`` int64 ``[N]`` gives each value's segment in
    ``[0, num_segments)`` -> float32 ``[num_segments]`` (an empty segment's mean is 0). One ``index_add``, no loop:
    the per-sample means of a packed sequence (a sample's tokens are one segment)."""
    values = values.float()
    sums = torch.zeros(num_segments, device=values.device).index_add(0, segment, values)
    counts = torch.zeros(num_segments, device=values.device).index_add(0, segment, torch.ones_like(values))
    return sums / counts.clamp_min(1.0)


def sample_weights(num_tokens: torch.Tensor, power: float) -> torch.Tensor:
    """Loss weights of the samples of one batch: ``w_i = N_i^r / sum_j N_j^r`` with ``N_i`` the sample's
    predicted (visual) tokens ``T_i·h_i·w_i`` and ``r = power`` (the released T2I/T2V trainer's
    ``reweight_loss_by_scale``: 0 by default, i.e. equal weights, and 0.5 in the released script; official
    update §C4). ``num_tokens`` ``[S]`` -> float32 ``[S]`` summing to 1."""
    n = num_tokens.float()
    w = torch.ones_like(n) if power == 0 else n.pow(float(power))
    return w / w.sum()


def _draw_first_frames(eligible: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor | None:
    """One draw per sample, True with probability ``ratio`` where ``eligible`` (bool ``[B]``); None, and no draw
    made, where the ratio is 0 or nothing is eligible, so a run without I2V makes the draws it made before."""
    if ratio <= 0 or not bool(eligible.any()):
        return None
    return (torch.rand(eligible.shape[0], device=eligible.device, generator=generator) < ratio) & eligible


def conditionable_clips(labels: torch.Tensor) -> torch.Tensor:
    """bool ``[B]``: which samples of a same-shape batch can get the first-frame condition (clips ``[B, C, T, h,
    w]`` with T >= 2 latent frames; images and one-frame clips cannot)."""
    ok = labels.dim() == 5 and labels.shape[2] >= 2
    return torch.full((labels.shape[0],), ok, dtype=torch.bool, device=labels.device)


def draw_first_frame_condition(labels: torch.Tensor, ratio: float,
                               generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Which clips of a batch get the first-frame condition: bool ``[B]``, each True with probability ``ratio``
    (the official ``i2v_ratio``, §B1), for video labels ``[B, C, T, h, w]`` with T >= 2 latent frames. None, and no
    draw made, where nothing can be conditioned (``ratio`` 0, images, one-frame clips), so a run without I2V makes
    exactly the draws it made before the option existed."""
    return _draw_first_frames(conditionable_clips(labels), ratio, generator)


def first_frame_clips(eligible: torch.Tensor, ratio: float, declared: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor | None:
    """The samples trained with the first-frame condition, bool ``[B]`` (None where none is): each ``eligible``
    sample (:func:`conditionable_clips`; in a packed batch, its clips of >= 2 latent frames) with probability
    ``ratio`` (the draw of :func:`draw_first_frame_condition`), and every eligible sample whose jsonl line says
    ``first_frame_condition: true`` (``declared``, bool ``[B]`` from the data, or None), as the official trainer
    conditions every clip its metadata marks (§B1). Used by plain and packed batches alike."""
    first = _draw_first_frames(eligible, ratio, generator)
    if declared is not None:
        declared = torch.as_tensor(declared, dtype=torch.bool, device=eligible.device) & eligible
        first = declared if first is None else first | declared
    return first if first is not None and bool(first.any()) else None


def text_sample_losses(net: Callable[..., torch.Tensor], labels: torch.Tensor, mixed: torch.Tensor,
                       keep_prob: torch.Tensor, text: torch.Tensor, text_lens: torch.Tensor,
                       first_frame: torch.Tensor | None = None, with_accuracy: bool = False):
    """The T2I/T2V loss of each sample: cross-entropy per label, averaged over the sample's predicted labels
    (facts §4.4) -> float32 ``[B]``; with ``with_accuracy`` also the share of correctly predicted labels per
    sample ``[B]``, as ``(loss, accuracy)``.

    ``net(mixed, keep_prob, text, text_lens[, first_frame=])`` is a :class:`~grn.models.t2iv.T2IVNet`; ``labels``
    the targets and ``mixed`` the input map (:func:`mix_with_noise_and_mask`), both ``[B, C, (T,) h, w]``;
    ``keep_prob`` ``[B]`` the pt values. ``first_frame`` (bool ``[B]``, :func:`draw_first_frame_condition`):
    those clips are trained as the official I2V trainer does (§B10): the clean labels of latent frame 0 go in as the
    first-frame condition tokens (time position 600), the mixed frames 1…T-1 as the generated ones (601…), and only
    these are predicted, so the loss is their mean. The keep mask, its random labels and the pt value are drawn
    over all T frames as for any clip (the caller's ``mixed`` and ``keep_prob``), as the official trainer does:
    there the pt value includes the masked-out first frame, at inference it does not (§B7; official update §G).
    """
    def losses(rows: torch.Tensor | None, cond: bool) -> torch.Tensor:
        pick = (lambda v: v) if rows is None else (lambda v: v[rows])
        x, z = pick(labels), pick(mixed)
        lens = pick(text_lens)
        txt = pick(text)[:, : int(lens.max())]
        if cond:
            logits = net(z[:, :, 1:], pick(keep_prob), txt, lens, first_frame=x[:, :, :1])
            x = x[:, :, 1:]
        else:
            logits = net(z, pick(keep_prob), txt, lens)
        logits = logits.float()
        ce = F.cross_entropy(logits, x, reduction="none").flatten(1).mean(1)
        return torch.stack([ce, (logits.argmax(1) == x).flatten(1).float().mean(1)], 1)  # [b, 2]

    if first_frame is None or not bool(first_frame.any()):
        both = losses(None, False)
    elif bool(first_frame.all()):
        both = losses(None, True)
    else:
        cond, plain = first_frame.nonzero().squeeze(1), (~first_frame).nonzero().squeeze(1)
        both = labels.new_zeros(labels.shape[0], 2, dtype=torch.float32)
        both = both.index_put((cond,), losses(cond, True)).index_put((plain,), losses(plain, False))
    return (both[:, 0], both[:, 1]) if with_accuracy else both[:, 0]
