"""Text-to-image / text-to-video sampling on top of :func:`grn.sampling.refine.refine`.

``refine`` calls ``net(labels, t, y)`` with per-sample ids ``y`` and, for guidance, a per-sample unconditional
id. :class:`TextConditionedNet` makes those ids rows of a caption table: rows ``0..B-1`` are the prompts, the
rows after them the negative prompts (one per sample, or one shared), so guidance is
``uncond + s · (cond - uncond)`` with the *negative prompt* as the unconditional branch (facts §4.5; the official
default negative prompt is ``""``, whose encoding is not empty: it is the end token). Everything else —
the cosine / shifted schedule, guidance interval, temperature, complexity-aware step counts, reproducible seeds
(one ``torch.Generator`` drives every draw; the official T2I/T2V sampler ignores its seed) and region
re-generation — is ``refine``'s.

Image-to-video: the given first frame is encoded once as a 1-frame clip (the tokenizer is causal, so this is
latent frame 0 of a clip that starts with the image) and its labels never change. Two forms (``i2v_mode``: the
network's config, or ``sampler.i2v_mode``):

* ``first_frame`` (official update §B5-B9): the first frame's clean tokens are appended after the generated frames
  in the network's sequence (time position 600, the generated frames at 601…), in the conditional and the
  unconditional branch alike (guidance contrasts only the text); no logits are read for them; the pt value is over
  the generated tokens only (``pt_value=realised``: the share of them the previous step kept, 0 at step 0; nominal:
  t_i); the output's frame 0 is the first frame's labels.
* ``region``: latent frame 0 is held fixed as known tokens of the T-frame map (region re-generation); with
  ``pt_value=nominal`` the network is told the share of real tokens in the whole map, given ones included.

Both run :func:`refine` over the T-frame map with frame 0 known (:func:`first_frame_condition` builds the
``known`` / ``region`` pair), so the loop, its draws and the returned frame 0 are the same; in ``first_frame``
form the network wrapper (:class:`TextConditionedNet`) splits frame 0 off as the condition tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from grn import hbq
from grn.models.packing import I2V_MODES
from grn.models.t2iv import T2IVNet
from grn.precision import autocast
from grn.sampling.config import SamplerConfig
from grn.sampling.refine import RefineResult, RefineStep, refine

log = logging.getLogger(__name__)


def pad_texts(texts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-caption features ``[L_i, D]`` -> ``(features [N, max L_i, D] zero-padded, lens int64 [N])``."""
    if not texts:
        raise ValueError("no captions given")
    lens = torch.tensor([t.shape[0] for t in texts], dtype=torch.long)
    if int(lens.min()) < 1:
        raise ValueError("every caption needs at least one token (the tokenizer adds an end token)")
    return torch.nn.utils.rnn.pad_sequence(list(texts), batch_first=True), lens


class TextConditionedNet:
    """``refine``'s network over a caption table: ``(labels [B', C, (T,) h, w], t [B'], ids [B']) -> logits``,
    where ``ids`` pick rows of ``features`` / ``lens`` (built by :func:`pad_texts`).

    ``cache_text``: under the ``text_only`` attention pattern text tokens attend only to their own caption, so
    their keys and values are the same at every step; they are computed once for the whole table
    (:meth:`T2IVNet.text_cache`, as the old official sampler's KV cache) and each step runs only the visual and pt
    tokens. Under ``fsa`` text attends the visual tokens, so its keys and values change every step: the cache is
    never used there (``cache_text`` is ignored) and every step runs the full sequence, as the FSA release does.
    ``False`` runs the full sequence every step.

    ``first_frame_tokens``: official I2V (module docstring): the maps ``[B', C, T, h, w]`` refine passes hold the
    given first frame in frame 0; it goes to the network as the clean condition tokens
    (:meth:`T2IVNet.forward` ``first_frame=``) and frames 1… as the generated ones. Frame 0's logits, which
    refine never uses there (it is outside the region), are returned as zeros.
    """

    def __init__(self, net: T2IVNet, features: torch.Tensor, lens: torch.Tensor,
                 h_div_w_template: float | None = None, cache_text: bool = True, first_frame_tokens: bool = False):
        self.net = net
        self.features = features
        self.lens = lens.to(features.device)
        self.h_div_w_template = h_div_w_template
        self.cache_text = cache_text and net.caption_kv_static  # never under fsa: text K/V depend on the map
        self.first_frame_tokens = first_frame_tokens
        self._cache = None

    def __call__(self, labels: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        extra = {}
        if self.first_frame_tokens:
            extra = {"first_frame": labels[:, :, :1]}
            labels = labels[:, :, 1:]
        if self.cache_text:
            if self._cache is None:
                self._cache = self.net.text_cache(self.features, self.lens)
            out = self.net.forward_cached(labels, t, self._cache.select(ids), self.h_div_w_template, **extra)
        else:
            lens = self.lens[ids]
            text = self.features[ids, : int(lens.max())]  # only as wide as the longest caption of this call
            out = self.net(labels, t, text, lens, self.h_div_w_template, **extra)
        if self.first_frame_tokens:  # [B', K, C, T - 1, h, w] -> frame 0 back in, with logits nobody reads
            out = torch.cat([out.new_zeros(out[:, :, :, :1].shape), out], dim=3)
        return out


def first_frame_condition(first: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-to-video condition: first-frame labels ``[B, C, h, w]`` (or ``[B, C, 1, h, w]``) -> ``known``
    ``[B, C, frames, h, w]`` (frame 0 the given labels, the rest placeholders that are never read) and
    ``region`` bool ``[1, 1, frames, 1, 1]`` (True on the frames to generate)."""
    if first.dim() == 4:
        first = first.unsqueeze(2)
    if first.dim() != 5 or first.shape[2] != 1:
        raise ValueError(f"first-frame labels must be [B, C, h, w] or [B, C, 1, h, w], got {list(first.shape)}")
    if frames < 2:
        raise ValueError(f"image-to-video needs at least 2 latent frames, got {frames}")
    known = first.expand(-1, -1, frames, -1, -1).contiguous()
    region = torch.ones(1, 1, frames, 1, 1, dtype=torch.bool, device=first.device)
    region[:, :, 0] = False
    return known, region


@torch.no_grad()
def encode_first_frame(tokenizer, image: torch.Tensor, target: str = "bits") -> torch.Tensor:
    """Pixels ``[B, 3, H, W]`` in [-1, 1] -> labels ``[B, C, 1, h, w]`` of latent frame 0 (``tokenizer`` an
    :class:`~grn.models.tokenizer.HBQTokenizer`)."""
    if image.dim() != 4:
        raise ValueError(f"the first frame must be [B, 3, H, W], got {list(image.shape)}")
    return tokenizer.encode(image.unsqueeze(2), target=target)


def sample_text_to_labels(
    net: T2IVNet,
    texts: Sequence[torch.Tensor],
    label_shape: Sequence[int],
    negative_texts: Sequence[torch.Tensor] | None = None,
    sampler: SamplerConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    first_frame: torch.Tensor | None = None,
    h_div_w_template: float | None = None,
    cache_text: bool = True,
    known: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
    callback: Callable[[int], None] | None = None,
    i2v_mode: str | None = None,
    on_step: Callable[[RefineStep], None] | None = None,
    **overrides: Any,
) -> RefineResult:
    """Generate label maps (the network's layout) for encoded captions; the layer under :func:`sample_t2iv`.

    Args:
        net: the T2I/T2V network (eval mode).
        texts: B caption encodings ``[L_i, text_dim]`` (:meth:`TextEncoder.encode_texts`).
        label_shape: ``(C, h, w)`` (image) or ``(C, T, h, w)`` (video) of one label map.
        negative_texts: the unconditional branch: one encoding per sample or a single shared one (the
            official default is the encoding of ``""``). Needed when ``cfg_scale != 1``.
        sampler: the settings (:class:`SamplerConfig`, whose defaults are the config's: ``schedule=linear``; the
            text tasks' configs and the official T2I/T2V sampler use ``schedule=cosine``); ``overrides`` (config
            keys) on top. Only the loop's settings are read here (:meth:`SamplerConfig.refine_options`).
        generator: the source of every random draw; same seed and device -> same labels.
        first_frame: image-to-video: labels ``[B, C, h, w]`` of latent frame 0 (:func:`encode_first_frame`),
            returned unchanged while the other frames are generated. Needs a video ``label_shape``.
        i2v_mode: ``first_frame`` | ``region`` (module docstring); None: ``sampler.i2v_mode``, else the network's
            ``i2v_mode``.
        h_div_w_template: the aspect-ratio template for the 3-D RoPE positions (default: nearest to h / w).
        cache_text: compute the captions' keys and values once (see :class:`TextConditionedNet`; ignored for
            ``attention='fsa'`` networks, where it would be wrong).
        known, region: region re-generation, as :func:`refine` (not together with ``first_frame``).
        callback: called with the step index after each step.
        on_step: called with a :class:`~grn.sampling.refine.RefineStep` after each step (see :func:`refine`).
    Returns:
        :class:`RefineResult` with labels ``[B, *label_shape]``.
    """
    cfg = SamplerConfig.build(sampler, **overrides)
    mode = resolve_i2v_mode(net, i2v_mode or cfg.i2v_mode)
    bsz = len(texts)
    rows = list(texts)
    null = None
    if negative_texts is not None:
        if len(negative_texts) not in (1, bsz):
            raise ValueError(f"give one negative prompt or one per caption ({bsz}), got {len(negative_texts)}")
        rows += list(negative_texts)
        # ids of the unconditional rows: each sample's own negative prompt, or the shared one
        null = bsz + torch.arange(bsz) if len(negative_texts) == bsz else bsz
    features, lens = pad_texts(rows)
    device = features.device
    official_i2v = first_frame is not None and mode == "first_frame"
    cond_net = TextConditionedNet(net, features, lens, h_div_w_template, cache_text, first_frame_tokens=official_i2v)
    if first_frame is not None:
        if len(label_shape) != 4:
            raise ValueError("image-to-video needs a video label_shape (C, T, h, w)")
        if known is not None or region is not None:
            raise ValueError("first_frame and known/region are two ways to give known tokens: use one")
        known, region = first_frame_condition(first_frame.to(device), label_shape[1])
    return refine(
        cond_net,
        torch.arange(bsz, device=device),
        label_shape,
        net.num_levels,
        null_class=null,
        generator=generator,
        known=known,
        region=region,
        callback=callback,
        pt_counts_known=not official_i2v,  # official I2V: the pt value is over the generated tokens only (§B7)
        on_step=on_step,
        **cfg.refine_options(),
    )


def resolve_i2v_mode(net: T2IVNet, i2v_mode: str | None = None) -> str:
    """``i2v_mode`` if given, else the network's (``region`` for a network without the setting)."""
    mode = i2v_mode or getattr(net, "i2v_mode", "region")
    if mode not in I2V_MODES:
        raise ValueError(f"i2v_mode must be one of {I2V_MODES}, got {mode!r}")
    return mode


@torch.no_grad()
def sample_t2iv(
    net: T2IVNet,
    encode: Callable[[list[str]], list[torch.Tensor]],
    captions: Sequence[str],
    label_shape: Sequence[int],
    generator: torch.Generator | None = None,
    negative_prompt: str | Sequence[str] = "",
    first_frame: torch.Tensor | None = None,
    sampler: SamplerConfig | None = None,
    *,
    callback: Callable[[int], None] | None = None,
    on_step: Callable[[RefineStep], None] | None = None,
    known: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
    **overrides: Any,
) -> RefineResult:
    """The T2I / T2V / I2V sampling entry: captions -> index labels ``[B, d, (T,) h, w]`` (bits are converted).

    The pipeline (:class:`grn.text_pipeline.TextPipeline`), ``sample.py``, the training module and the scripts
    all sample captions through this function; for pixels use the pipeline.

    Args:
        encode: maps captions to ``[L_i, D]`` float features (a text encoder's ``encode_texts``, or a memo).
        label_shape: the network's ``(C, h, w)`` or ``(C, T, h, w)``.
        negative_prompt: the unconditional branch of guidance, one for all or one per caption (official ``""``);
            encoded only when guidance is on.
        first_frame: image-to-video: labels of latent frame 0 in the network's layout ``[B, C, h, w]``, in the
            form ``sampler.i2v_mode`` names (null: the network's ``i2v_mode``; see the module docstring).
        known, region: region re-generation: index labels ``[B, d, (T,) h, w]`` to keep (converted to bits
            for a GRN_bit network) and a bool mask broadcastable to them, True where to generate.
        callback, on_step: per-step observers (:func:`sample_text_to_labels`).
        sampler, overrides: as :func:`sample_text_to_labels`. ``precision`` (``fp32`` | ``bf16`` | ``auto``,
            :mod:`grn.precision`): bf16 autocast for the network passes; the label head, and so the logits the
            sampler draws from, stay fp32. ``compile`` applies to the class-conditional sampler only.
    """
    cfg = SamplerConfig.build(sampler, **overrides)
    if known is not None and net.target == "bits":
        known = hbq.index_labels_to_bit_labels(known, net.hbq_rounds)
    if cfg.compile:
        log.warning("sampler.compile applies to the class-conditional sampler; T2I/T2V sampling runs eagerly")
    texts = encode(list(captions))
    negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
    negative = encode(negatives) if cfg.cfg_scale != 1.0 else None
    was_training = net.training
    net.eval()
    try:
        with autocast(cfg.precision, next(net.parameters()).device):
            result = sample_text_to_labels(net, texts, label_shape, negative, cfg, generator=generator,
                                           first_frame=first_frame, callback=callback, on_step=on_step,
                                           known=known, region=region)
    finally:
        net.train(was_training)
    if net.target == "bits":
        result.labels = hbq.bit_labels_to_index_labels(result.labels, net.hbq_rounds)
    return result
