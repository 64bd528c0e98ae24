"""The official pipeline call (official_update §F1–F2, §F6) on grn's text pipeline.

    pipe = GRNPipeline.from_pretrained(hf_repo_id="bytedance-research/GRN", task="T2V", pn="0.41M",
                                       model="GRN8b", device="cuda")
    out = pipe(prompt="a red fox runs through snow", seed=0, duration=2.0)
    out.videos  # [".../grn_t2v_seed0_....mp4"]; T2I: out.images, a list of PIL images

What differs from the official pipeline, on purpose: the seed seeds every draw (one ``torch.Generator``; a run
without a seed draws one and reports it as ``out.seed``), the complexity-aware arguments are used (``k != 0``
selects Eq. 9 step counts between ``complexity_aware_Tmin`` and ``Tmax``; with the official default ``k = 0`` every
sample takes ``Tmax`` steps of the official schedule), the 8B T2I file is selectable, and nothing assumes CUDA.
Argument defaults left at ``None`` take the per-task decoding defaults of the official tools (:mod:`grn.prompts`).
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grn import prompts as P
from grn.datamodules.buckets import bucket_pixels, nearest_template
from grn.hub import OFFICIAL_REPO, hub_file, hub_folder, official_files, official_task
from grn.text_pipeline import TextPipeline, cover_crop, first_frame_tensor

__all__ = ["OfficialOutput", "OfficialTextPipeline", "cover_crop", "first_frame_tensor"]

VIDEO_FPS = 16
MAX_FRAMES = 81  # the official pipeline's video_frames: 5 s at 16 fps


@dataclass
class OfficialOutput:
    """``images``: PIL images (one frame generated) or ``videos``: mp4 paths, as the official pipeline returns;
    plus what it does not: the labels, each sample's step count and the seed that ran."""

    images: list = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    labels: torch.Tensor | None = None
    steps: torch.Tensor | None = None
    seed: int = 0
    size: tuple[int, int, int] = (1, 0, 0)  # frames, height, width


class OfficialTextPipeline:
    """A :class:`~grn.text_pipeline.TextPipeline` called with the official arguments and returning the official
    result types. ``task`` is ``T2I`` or ``T2V`` (I2V is ``T2V`` with ``first_frame_condition=True``)."""

    def __init__(self, pipe: TextPipeline, task: str, pn: str | None = None):
        self.pipe = pipe
        self.task = official_task(task)
        self.pn = pn or P.DECODING_DEFAULTS[self.task.lower()]["pn"]

    @classmethod
    def from_hub(cls, hf_repo_id: str = OFFICIAL_REPO, task: str = "T2I", pn: str | None = None,
                 model: str = "GRN2b", device: str | torch.device = "cpu", cache_dir: str | Path | None = None,
                 text_encoder: Any = None) -> OfficialTextPipeline:
        """Resolve the official files of (task, model) in ``hf_repo_id`` through the hub cache and load them
        (generator and tokenizer through grn's official adapters, the umT5 encoder from ``umt5-xxl/``, unless a
        loaded ``text_encoder`` is given)."""
        from grn.checkpoints import load_t2iv, load_tokenizer
        from grn.models.text_encoder import load_umt5_encoder

        files = official_files(task, model)
        generator = hub_file(hf_repo_id, files.generator, cache_dir)
        tokenizer = hub_file(hf_repo_id, files.tokenizer, cache_dir)
        if text_encoder is None:
            weights = hub_file(hf_repo_id, files.text_encoder_weights, cache_dir)
            vocab = hub_folder(hf_repo_id, files.text_encoder_tokenizer, cache_dir)
            text_encoder = load_umt5_encoder(weights, vocab, dtype="float32", device=device)
        net, hp = load_t2iv(generator, ema=None)
        pipe = TextPipeline(net, text_encoder, load_tokenizer(tokenizer), official_task(task).lower(), device,
                            str(tokenizer))
        pipe.origin = {"ckpt": str(generator), "tokenizer_ckpt": str(tokenizer), "hparams": hp}
        return cls(pipe, task, pn)

    def save_pretrained(self, folder: str | Path, **options: Any) -> Path:
        """The text pipeline in grn's hub format (:meth:`grn.pipeline_hub.HubMixin.save_pretrained`): the network
        and tokenizer as safetensors, the umT5 encoder as a reference to the official files."""
        return self.pipe.save_pretrained(folder, **options)

    def sampler_overrides(self, guidance_scale: float, temperature: float, snr_shift: float, tmin: int,
                          tmax: int, k: float, b: float, wp: int) -> dict[str, Any]:
        """The sampler keys the official arguments mean (module docstring)."""
        # the released sampler (conf/sampler/official_t2iv.yaml): guidance at every step, the realised pt value
        options: dict[str, Any] = {"cfg_scale": float(guidance_scale), "temperature": float(temperature),
                                   "keep_prob_shift": float(snr_shift), "cfg_interval": [0.0, 1.0],
                                   "pt_value": "realised"}
        if k:
            options.update(schedule="complexity_aware", complexity_warmup_steps=int(wp), alpha=int(tmax),
                           k=float(k), b=float(b), complexity_min_steps=int(tmin), complexity_max_steps=int(tmax))
        else:
            options.update(schedule="official_t2iv", num_steps=int(tmax))
        return options

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        complexity_aware_Tmin: int = 10,  # noqa: N803 - the official argument names
        complexity_aware_Tmax: int | None = None,  # noqa: N803
        complexity_aware_k: float = 0.0,
        complexity_aware_b: float = 50.0,
        complexity_aware_wp: int = 5,
        first_frame_condition: bool = False,
        first_frame_path: str | Path | None = None,
        snr_shift: float | None = None,
        h_div_w: float | None = None,
        duration: float | None = None,
        content_type: str | None = None,
        seed: int | None = None,
        output_dir: str | Path | None = None,
        **sampler: Any,
    ) -> OfficialOutput:
        """Generate one image (``content_type='image'``, T2I's default) or one clip (T2V's); the prompt gets the
        task prefix (and, for clips, the quality suffix) as the official tools write it. ``sampler``: further grn
        sampler keys (e.g. ``precision='bf16'``)."""
        video = (content_type or ("image" if self.task == "T2I" else "video")) == "video"
        if content_type not in (None, "image", "video"):
            raise ValueError(f"content_type must be 'image' or 'video', got {content_type!r}")
        if first_frame_condition and not video:
            raise ValueError("first_frame_condition needs a video (content_type='video')")
        if first_frame_condition and first_frame_path is None:
            raise ValueError("first_frame_condition=True needs first_frame_path=<image>")
        task = P.video_task(first_frame_condition) if video else "t2i"
        defaults = P.DECODING_DEFAULTS[task]
        negative = P.NEGATIVE_PROMPTS[task] if negative_prompt is None else negative_prompt
        ratio = nearest_template(defaults["h_div_w"] if h_div_w is None else float(h_div_w))
        height, width = bucket_pixels(ratio, self.pn)
        frames = 1
        if video:
            seconds = defaults["duration_s"] if duration is None else float(duration)
            frames = min(MAX_FRAMES, int(seconds * VIDEO_FPS + 1))
            frames = 1 + (frames - 1) // self.pipe.tokenizer.temporal_stride * self.pipe.tokenizer.temporal_stride
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)  # reported in the output, so the run can be repeated
        options = self.sampler_overrides(
            defaults["cfg_scale"] if guidance_scale is None else guidance_scale,
            defaults["temperature"] if temperature is None else temperature,
            defaults["keep_prob_shift"] if snr_shift is None else snr_shift,
            complexity_aware_Tmin, defaults["num_steps"] if complexity_aware_Tmax is None else complexity_aware_Tmax,
            complexity_aware_k, complexity_aware_b, complexity_aware_wp)
        image = first_frame_tensor(first_frame_path, height, width) if first_frame_condition else None
        result = self.pipe([P.inference_prompt(prompt, task)], seed=int(seed), height=height, width=width,
                           frames=frames if video else None, negative_prompt=negative, image=image,
                           **{**options, **sampler})
        out = OfficialOutput(labels=result.labels, steps=result.steps, seed=int(seed), size=(frames, height, width))
        pixels = ((result.images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        if not video:
            from PIL import Image

            out.images = [Image.fromarray(pixels[0].permute(1, 2, 0).numpy())]
            return out
        from grn.datamodules.video import encode_mp4
        from grn.io import atomic_write_bytes

        clip = pixels[0].permute(1, 2, 3, 0).numpy()  # [T, H, W, 3]
        folder = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="grn_"))
        path = folder / f"grn_{task}_seed{seed}.mp4"
        out.videos = [str(atomic_write_bytes(encode_mp4(clip[:, : height // 2 * 2, : width // 2 * 2], VIDEO_FPS),
                                             path))]
        return out
