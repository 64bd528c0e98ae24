"""The class-to-image sampling entry: class ids -> index labels with a :class:`~grn.models.generator.GRN`.

Everything that samples C2I labels calls :func:`sample_labels` — the pipeline, ``sample.py`` / ``eval.py``, the
training module's validation samples and the callbacks — with one :class:`~grn.sampling.config.SamplerConfig`.
Text conditioning has its entry in :mod:`grn.sampling.text`.
"""

from __future__ import annotations

from typing import Any

import torch

from grn import hbq
from grn.models.generator import GRN
from grn.precision import autocast
from grn.sampling.config import SamplerConfig
from grn.sampling.refine import RefineResult, refine


@torch.no_grad()
def sample_labels(
    net: GRN,
    classes: torch.Tensor,
    generator: torch.Generator | None = None,
    sampler: SamplerConfig | None = None,
    *,
    known: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
    callback=None,
    on_step=None,
    **overrides: Any,
) -> RefineResult:
    """Run the refinement sampler with ``net``; returns index labels ``[B, d, h, w]`` (bits are converted).

    Args:
        classes: int64 ``[B]`` class ids.
        generator: the source of every random draw (``sampler.seed`` is not read here: seed the generator).
        sampler: the settings (default :class:`SamplerConfig`); ``overrides`` (config keys, e.g. ``num_steps=6``)
            are applied on top, and an unknown key is an error. ``compile=True`` runs the network through
            ``torch.compile`` (compiled once per network and kept; the first call pays the compile time).
            ``precision`` (``fp32``, the default, | ``bf16`` | ``auto``, :mod:`grn.precision`) runs the network
            passes under bf16 autocast; the logits stay fp32 (the network's output layer), and so do the draws.
            ``bit_target`` must be None (as trained) or the network's own.
        known, region: region re-generation — index labels ``[B, d, h, w]`` to keep and a bool mask
            ``[B, 1, h, w]`` (or broadcastable) that is True where to generate.
        callback: called with the step index after each step (progress bars).
        on_step: called with a :class:`~grn.sampling.refine.RefineStep` after each step (the maps in the
            network's layout: bits for GRN_bit); nothing is computed for it when None.
    """
    cfg = SamplerConfig.build(sampler, **overrides)
    forward = compiled_forward(net) if cfg.compile else net
    trained = getattr(net, "bit_target", "absolute")
    if cfg.bit_target is not None and cfg.bit_target != trained:
        raise ValueError(f"sampler.bit_target={cfg.bit_target!r} but this network was trained with "
                         f"bit_target={trained!r}; leave sampler.bit_target null to use the trained one")
    if known is not None and net.target == "bits":
        known = hbq.index_labels_to_bit_labels(known, net.hbq_rounds)
    was_training = net.training
    net.eval()
    try:
        with autocast(cfg.precision, classes.device):
            result = refine(
                forward,
                classes,
                (net.label_channels, net.input_size, net.input_size),
                net.num_levels,
                null_class=net.num_classes,
                generator=generator,
                known=known,
                region=region,
                bit_target=trained,
                callback=callback,
                on_step=on_step,
                **cfg.refine_options(),
            )
    finally:
        net.train(was_training)
    if net.target == "bits":
        result.labels = hbq.bit_labels_to_index_labels(result.labels, net.hbq_rounds)
    return result


def compiled_forward(net: torch.nn.Module):
    """``torch.compile`` of ``net``'s forward, built once and kept on the network (batch sizes that change, as under
    complexity-aware sampling, are compiled dynamically after the first change)."""
    fn = net.__dict__.get("_grn_compiled_forward")
    if fn is None:
        fn = torch.compile(net.forward, dynamic=None)
        net.__dict__["_grn_compiled_forward"] = fn
    return fn
