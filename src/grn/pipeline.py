"""``GRNPipeline``: class ids in, images out — for Python users and the sample/eval entry points.
``GRNPipeline.from_pretrained(path, task="t2i" | "t2v" | "i2v")`` returns the text pipeline instead
(:mod:`grn.text_pipeline`).

    pipe = GRNPipeline.from_pretrained("runs/quickstart/c2i/checkpoints/last.ckpt")
    out = pipe([3, 3, 7], seed=0, num_steps=30, cfg_scale=2.0)
    out.images  # float [3, 3, 32, 32] in [-1, 1]
    pipe.save_pretrained("grn-digits")                  # the hub format (grn.pipeline_hub), loaded back with
    pipe = GRNPipeline.from_pretrained("grn-digits")    # from_pretrained(folder or "owner/name")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from grn.checkpoints import load_generator, load_tokenizer
from grn.hub import is_repo_id
from grn.models.generator import GRN
from grn.pipeline_hub import HubMixin
from grn.pipeline_output import PipelineOutput
from grn.sampling.config import SamplerConfig
from grn.sampling.entry import sample_labels
from grn.sampling.refine import RefineStep
from grn.sampling.region import latent_region, region_condition

__all__ = ["GRNPipeline", "PipelineOutput"]


class GRNPipeline(HubMixin):
    """A trained generator and the frozen tokenizer that decodes its labels. ``sampler``: the settings a call
    starts from (None: :class:`SamplerConfig`'s defaults; a saved pipeline loads with the ones it was saved with);
    ``origin``: where it was loaded from (for :meth:`save_pretrained`'s model card)."""

    task = "c2i"

    def __init__(
        self,
        generator: GRN,
        tokenizer: torch.nn.Module,
        device: str | torch.device = "cpu",
        tokenizer_ckpt: str | None = None,
    ):
        self.device = torch.device(device)
        self.tokenizer_ckpt = tokenizer_ckpt  # where the tokenizer came from, for records
        self.sampler: SamplerConfig | None = None
        self.origin: dict[str, Any] = {}
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
        net, hp = load_generator(ckpt, ema=ema)
        tok_path = tokenizer_ckpt or hp.get("tokenizer_ckpt")
        if not tok_path:
            raise ValueError(f"{ckpt} records no tokenizer checkpoint: pass tokenizer_ckpt=<path>")
        tokenizer = load_tokenizer(tok_path)
        pipe = cls(net, tokenizer, device, tokenizer_ckpt=str(tok_path))
        pipe.origin = {"ckpt": str(ckpt), "tokenizer_ckpt": str(tok_path), "hparams": hp}
        return pipe

    @classmethod
    def from_pretrained(
        cls,
        ckpt: str | Path | None = None,
        task: str | None = None,
        tokenizer_ckpt: str | Path | None = None,
        ema: str | None = "ema1",
        device: str | torch.device = "cpu",
        *,
        hf_repo_id: str | None = None,
        pn: str | None = None,
        model: str = "GRN2b",
        cache_dir: str | Path | None = None,
        text_encoder: Any = None,
    ):
        """The pipeline for ``task``: ``c2i`` (this class) or ``t2i`` / ``t2v`` / ``i2v``
        (:class:`grn.text_pipeline.TextPipeline`). ``task=None`` reads it from the checkpoint (a text-conditioned
        checkpoint defaults to ``t2i``; pass ``t2v`` / ``i2v`` for clips).

        ``ckpt`` is a training checkpoint (or export, or official C2I file), or a pipeline saved with
        :meth:`save_pretrained`: its folder, or a Hugging Face repo id ``owner/name`` (resolved through the hub
        cache; ``cache_dir`` overrides it; offline, a file not cached is one line naming it). A saved text model
        brings its caption encoder unless ``text_encoder`` is given.

        With ``hf_repo_id`` (the official call, e.g. ``hf_repo_id="bytedance-research/GRN", task="T2V",
        pn="0.41M", model="GRN8b"``), the official release files of (task, model) are resolved through the
        Hugging Face cache and the result is called with the official arguments
        (:class:`grn.official_pipeline.OfficialTextPipeline`)."""
        from grn.checkpoints import read_checkpoint, require_checkpoint_file
        from grn.text_pipeline import TEXT_TASKS, TextPipeline

        if hf_repo_id is not None:
            from grn.official_pipeline import OfficialTextPipeline

            if ckpt is not None:
                raise ValueError("give either a checkpoint path or hf_repo_id=, not both")
            return OfficialTextPipeline.from_hub(hf_repo_id, task or "T2I", pn, model, device, cache_dir,
                                                 text_encoder)
        if ckpt is None:
            raise ValueError("from_pretrained needs a checkpoint path or hf_repo_id=<hub repo>")
        task = task.lower() if isinstance(task, str) else task
        if is_repo_id(ckpt) or (Path(ckpt).is_dir() and (Path(ckpt) / "config.json").is_file()):
            if tokenizer_ckpt is not None:
                raise ValueError(f"{ckpt} is a saved pipeline with its own tokenizer: tokenizer_ckpt= does not apply")
            return cls._from_saved(ckpt, task, device, cache_dir, text_encoder)
        if task is None:
            path = require_checkpoint_file(ckpt, "generator")
            hp = read_checkpoint(path, mmap=True).get("hyper_parameters", {})
            task = "t2i" if "text_encoder" in hp else "c2i"
        if task in TEXT_TASKS:
            return TextPipeline.from_checkpoint(ckpt, task, tokenizer_ckpt, ema, device)
        if task != "c2i":
            raise ValueError(f"unknown task {task!r}; choose c2i, t2i, t2v or i2v")
        return cls.from_checkpoint(ckpt, tokenizer_ckpt, ema, device)

    @classmethod
    def _from_saved(cls, source: str | Path, task: str | None, device: str | torch.device,
                    cache_dir: str | Path | None, text_encoder: Any):
        """A pipeline saved by :meth:`save_pretrained` (folder or repo id); see :meth:`from_pretrained`."""
        from grn.checkpoints.pretrained import read_pretrained
        from grn.hub import pretrained_resolver
        from grn.text_pipeline import TEXT_TASKS, TextPipeline

        parts = read_pretrained(pretrained_resolver(source, cache_dir), text_encoder, cache_dir)
        task = task or parts.task
        if (parts.task == "c2i") != (task == "c2i") or task not in (*TEXT_TASKS, "c2i"):
            raise ValueError(f"{source} holds a {parts.task} model: task={task!r} does not apply "
                             f"(choose {'c2i' if parts.task == 'c2i' else ', '.join(TEXT_TASKS)})")
        if task == "c2i":
            pipe = cls(parts.net, parts.tokenizer, device, tokenizer_ckpt=parts.source.get("tokenizer_ckpt"))
        else:
            pipe = TextPipeline(parts.net, parts.text_encoder, parts.tokenizer, task, device,
                                parts.source.get("tokenizer_ckpt"))
        pipe.sampler = SamplerConfig.build(parts.sampler)
        pipe.origin = {**parts.source, "pretrained": str(source)}
        return pipe

    def hub_network(self) -> GRN:
        return self.generator

    def grid_images(self, sampler: SamplerConfig, grid: dict[str, Any]) -> tuple[torch.Tensor, str]:
        """The model card's grid: one sample per class id (default the first ten), seed 0."""
        classes = list(grid.get("classes", range(min(10, self.generator.num_classes))))
        images = self(classes, seed=int(grid.get("seed", 0)), sampler=sampler).images
        return images, f"Classes {classes}, seed {int(grid.get('seed', 0))}, the sampler defaults below."

    @property
    def image_size(self) -> int:
        return self.generator.input_size * self.tokenizer.spatial_stride

    def latent_region(self, mask: torch.Tensor) -> torch.Tensor:
        """Pixel mask ``[B, 1, H, W]`` (True/1 = regenerate) -> token mask ``[B, 1, h, w]``: a token is
        regenerated if any pixel of its patch is masked."""
        return latent_region(mask, self.tokenizer.spatial_stride)

    @torch.no_grad()
    def __call__(
        self,
        classes: list[int] | torch.Tensor,
        seed: int = 0,
        progress: bool = False,
        init: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        sampler: SamplerConfig | None = None,
        on_step: Callable[[RefineStep], None] | None = None,
        init_labels: torch.Tensor | None = None,
        **overrides: Any,
    ) -> PipelineOutput:
        """Generate one image per class id; same seed and device -> same images.

        Args:
            classes: class ids ``[B]``.
            init, mask: region re-generation. ``init`` pixels ``[B or 1, 3, H, W]`` in [-1, 1] (an existing image
                or an earlier sample) and ``mask`` ``[B or 1, 1, H, W]``, nonzero where to regenerate. Tokens
                outside the (token-rounded) mask keep the encoded labels of ``init`` exactly.
            init_labels: instead of ``init``, the index labels ``[B or 1, d, h, w]`` to keep (an earlier
                sample's ``labels``: revising it keeps its own tokens, not its decoded pixels re-encoded).
            sampler: the settings (:class:`~grn.sampling.config.SamplerConfig`, default: ``self.sampler``, else
                its defaults);
            on_step: called after each refinement step with a :class:`~grn.sampling.refine.RefineStep` (the
                maps in the network's layout; the studio's live view and progress bar); free when None.
            overrides: config keys on top (num_steps, schedule, cfg_scale, cfg_interval, temperature, ...).
                ``sampler.seed`` is not read: ``seed`` seeds the draws.
        """
        cfg = self.default_sampler(sampler, **overrides)
        y = torch.as_tensor(classes, dtype=torch.long, device=self.device).view(-1)
        if (y < 0).any() or (y >= self.generator.num_classes).any():
            raise ValueError(f"class ids must be in [0, {self.generator.num_classes}), got {y.tolist()}")
        size = (self.image_size, self.image_size)
        known, region = region_condition(self.tokenizer, len(y), size, init, mask, init_labels, self.device)
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        if progress:
            with Progress(transient=True) as bar:
                task = bar.add_task(f"refining {len(y)} image(s)", total=cfg.max_steps)
                result = sample_labels(self.generator, y, g, cfg, known=known, region=region,
                                       callback=lambda i: bar.advance(task), on_step=on_step)
        else:
            result = sample_labels(self.generator, y, g, cfg, known=known, region=region, on_step=on_step)
        images = self.tokenizer.decode_labels(result.labels, target="index").clamp(-1, 1)
        return PipelineOutput.of(images, result)
