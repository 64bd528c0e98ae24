"""``save_pretrained`` / ``push_to_hub`` of both pipelines (:class:`grn.pipeline.GRNPipeline`,
:class:`grn.text_pipeline.TextPipeline`), and the sampler defaults and provenance they keep for it.

    pipe = GRNPipeline.from_pretrained("runs/quickstart/c2i/checkpoints/last.ckpt")
    pipe.save_pretrained("grn-digits")                 # model.safetensors, config.json, tokenizer/, README.md, samples.png
    pipe = GRNPipeline.from_pretrained("grn-digits")   # or "owner/grn-digits" through the Hugging Face cache
    pipe.push_to_hub("owner/grn-digits")               # a token from `huggingface-cli login`, HF_TOKEN or token=

The format: :mod:`grn.checkpoints.pretrained`; the card: :mod:`grn.model_card`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from grn.sampling.config import SamplerConfig

__all__ = ["GRID_FILE", "HubMixin", "TEXT_GRID_PROMPTS"]

GRID_FILE = "samples.png"
TEXT_GRID_PROMPTS = ("a red fox in fresh snow", "a bowl of fruit on a wooden table", "a lighthouse at dusk",
                     "a city street at night")


class HubMixin:
    """What a pipeline needs to travel. Pipelines set ``task``, ``tokenizer``, ``sampler`` (a
    :class:`SamplerConfig` or None: the defaults their ``__call__`` uses), ``origin`` (where they were loaded from)
    and implement :meth:`hub_network` and :meth:`grid_images`."""

    sampler: SamplerConfig | None = None
    origin: dict[str, Any]
    task: str
    tokenizer: torch.nn.Module

    def hub_network(self) -> torch.nn.Module:
        raise NotImplementedError

    def grid_images(self, sampler: SamplerConfig, grid: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
        """``(images [N, 3, H, W] in [-1, 1], caption)`` of the model card's sample grid."""
        raise NotImplementedError

    def default_sampler(self, sampler: SamplerConfig | Mapping[str, Any] | None = None,
                        **overrides: Any) -> SamplerConfig:
        """``sampler`` (default: the pipeline's own defaults, ``self.sampler``) with ``overrides``."""
        return SamplerConfig.build(self.sampler if sampler is None else sampler, **overrides)

    def _source(self) -> dict[str, Any]:
        origin = dict(getattr(self, "origin", None) or {})
        source = {k: origin[k] for k in ("ckpt", "tokenizer_ckpt", "global_step", "hparams", "pretrained")
                  if origin.get(k) is not None}
        if "global_step" not in source and source.get("ckpt") and Path(source["ckpt"]).is_file():
            from grn.checkpoints import read_checkpoint

            try:  # memory-mapped: only the small entry is read
                source["global_step"] = read_checkpoint(source["ckpt"], mmap=True).get("global_step")
            except (ValueError, OSError):  # the checkpoint moved or is not a grn one: the card says less
                pass
        if isinstance(source.get("hparams"), dict):  # the network's config is config.json's "net" already
            source["hparams"] = {k: v for k, v in source["hparams"].items() if k != "net"}
        return source

    def save_pretrained(self, folder: str | Path, *, sampler: SamplerConfig | Mapping[str, Any] | None = None,
                        metrics: Mapping[str, Any] | str | Path | None = None, data: str | None = None,
                        grid: bool | Mapping[str, Any] = True, repo_id: str | None = None) -> Path:
        """Write the pipeline in the hub format into ``folder``; returns it.

        Args:
            sampler: the sampler settings saved as the loaded pipeline's defaults (default: this pipeline's).
            metrics: the metrics the card reports: a dict, or a ``metrics.json`` path (default: the metrics file
                of the training run the checkpoint came from, when there is one).
            data: the training data's name for the card (default: the run's ``data`` config choice).
            grid: write ``samples.png`` (seed 0, the saved sampler): True, False, or the call's arguments
                (``classes=[...]``; text models ``prompts=[...], height=, width=``).
            repo_id: the repo the card's example loads from.
        """
        from grn.checkpoints.pretrained import write_pretrained
        from grn.io import atomic_write_bytes
        from grn.model_card import model_card, run_records

        cfg = self.default_sampler(sampler)
        source = self._source()
        folder = write_pretrained(folder, self.task, self.hub_network(), self.tokenizer,
                                  getattr(self, "text_encoder", None), cfg.to_dict(), source)
        records = run_records(source.get("ckpt"))
        if isinstance(metrics, (str, Path)):
            import json

            records["metrics"], records["metrics_file"] = json.loads(Path(metrics).read_text()), str(metrics)
        elif metrics is not None:
            records["metrics"], records["metrics_file"] = dict(metrics), None
        if data:
            records["data"] = data
        grid_name, caption = None, ""
        if grid:
            from torchvision.utils import save_image

            images, caption = self.grid_images(cfg, grid if isinstance(grid, Mapping) else {})
            save_image(((images.float().cpu() + 1) / 2).clamp(0, 1), folder / GRID_FILE, nrow=min(len(images), 10),
                       padding=2, pad_value=0.5)
            grid_name = GRID_FILE
        card = model_card(self.task, self.hub_network().grn_config, cfg.to_dict(), source, records, grid_name,
                          repo_id, caption)
        atomic_write_bytes(card.encode(), folder / "README.md")
        return folder

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool | None = None,
                    commit_message: str = "Upload grn pipeline", **save_options: Any) -> str:
        """:meth:`save_pretrained` into a temporary folder, then upload it to the model repo ``repo_id`` (created
        if missing) through ``huggingface_hub.HfApi``; returns the commit URL. ``save_options`` go to
        :meth:`save_pretrained`."""
        from grn.hub import push_folder

        with tempfile.TemporaryDirectory(prefix="grn_push_") as tmp:
            self.save_pretrained(tmp, repo_id=repo_id, **save_options)
            return push_folder(tmp, repo_id, token, private, commit_message)
