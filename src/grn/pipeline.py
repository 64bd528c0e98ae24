"""``GRNPipeline``: class ids in, images out — for Python users and the sample/eval entry points.

    pipe = GRNPipeline.from_pretrained("runs/quickstart/c2i/checkpoints/last.ckpt")
    out = pipe([3, 3, 7], seed=0, num_steps=30, cfg_scale=2.0)
    out.images  # float [3, 3, 32, 32] in [-1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from grn.lit_modules.generator import load_generator, sample_labels
from grn.models.generator import GRN


@dataclass
class PipelineOutput:
    """images: float ``[B, 3, H, W]`` in [-1, 1]; labels: int64 index labels ``[B, d, h, w]``; stats: per-step."""

    images: torch.Tensor
    labels: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class GRNPipeline:
    """A trained generator and the frozen tokenizer that decodes its labels."""

    def __init__(self, generator: GRN, tokenizer: torch.nn.Module, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval()
        self.tokenizer = tokenizer.to(self.device).eval()
        if tokenizer.latent_dim != generator.latent_dim or tokenizer.hbq_rounds != generator.hbq_rounds:
            raise ValueError(
                f"tokenizer (d={tokenizer.latent_dim}, M={tokenizer.hbq_rounds}) does not match the generator "
                f"(d={generator.latent_dim}, M={generator.hbq_rounds})"
            )

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: str | Path,
        tokenizer_ckpt: str | Path | None = None,
        ema: str | None = "ema1",
        device: str | torch.device = "cpu",
    ) -> "GRNPipeline":
        """Load a generator training checkpoint and the tokenizer it was trained on (or ``tokenizer_ckpt``)."""
        from grn.lit_modules.tokenizer import TokenizerLitModule

        net, hp = load_generator(ckpt, ema=ema)
        tok_path = tokenizer_ckpt or hp.get("tokenizer_ckpt")
        if not tok_path:
            raise ValueError(f"{ckpt} records no tokenizer checkpoint: pass tokenizer_ckpt=<path>")
        tokenizer = TokenizerLitModule.load_tokenizer(tok_path)
        return cls(net, tokenizer, device)

    from_pretrained = from_checkpoint

    @torch.no_grad()
    def __call__(
        self, classes: list[int] | torch.Tensor, seed: int = 0, progress: bool = False, **sampler: Any
    ) -> PipelineOutput:
        """Generate one image per class id. ``sampler``: num_steps, cfg_scale, cfg_interval, temperature,
        schedule. Same seed and device -> same images."""
        y = torch.as_tensor(classes, dtype=torch.long, device=self.device).view(-1)
        if (y < 0).any() or (y >= self.generator.num_classes).any():
            raise ValueError(f"class ids must be in [0, {self.generator.num_classes}), got {y.tolist()}")
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        steps = int(sampler.get("num_steps", 50))
        if progress:
            with Progress(transient=True) as bar:
                task = bar.add_task(f"refining {len(y)} image(s)", total=steps)
                result = sample_labels(self.generator, y, g, callback=lambda i: bar.advance(task), **sampler)
        else:
            result = sample_labels(self.generator, y, g, **sampler)
        images = self.tokenizer.decode_labels(result.labels, target="index").clamp(-1, 1)
        return PipelineOutput(images=images, labels=result.labels, stats=result.stats)
