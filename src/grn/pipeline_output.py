"""What both pipelines return (:class:`grn.pipeline.GRNPipeline`, :class:`grn.text_pipeline.TextPipeline`); a module
of its own so that neither pipeline imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from grn.sampling.refine import RefineResult


@dataclass
class PipelineOutput:
    """images: float ``[B, 3, H, W]`` (or clips ``[B, 3, T, H, W]``) in [-1, 1]; labels: int64 index labels
    ``[B, d, (T,) h, w]``; steps: int64 ``[B]`` refinement steps per sample; stats: per-step statistics of the
    sampler."""

    images: torch.Tensor
    labels: torch.Tensor
    steps: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, images: torch.Tensor, result: RefineResult) -> PipelineOutput:
        """The decoded ``images`` of a sampler ``result``."""
        return cls(images=images, labels=result.labels, steps=result.steps, stats=result.stats)
