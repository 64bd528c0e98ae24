"""``TextPipeline``: captions in, images or videos out (text-to-image, text-to-video, image-to-video).

    pipe = GRNPipeline.from_pretrained("runs/t2iv_digits/t2v/checkpoints/last.ckpt", task="t2v")
    out = pipe(["a handwritten seven moving left"], seed=0, height=32, width=32, frames=5, cfg_scale=2.0)
    out.images  # float [1, 3, 5, 32, 32] in [-1, 1]
    out = pipe(["a handwritten seven moving left"], image=first_frame)   # image-to-video, task="i2v"
    out = pipe(["a handwritten seven moving left"], image="first.png", height=32, width=32, frames=5)

Image-to-video follows the network's ``i2v_mode`` (official first-frame tokens or region re-generation,
:mod:`grn.sampling.text`); a file or PIL image is read as the official pipeline reads ``first_frame_path``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from grn import hbq
from grn.models.t2iv import T2IVNet
from grn.models.text_encoder import encode_memoized
from grn.pipeline_hub import TEXT_GRID_PROMPTS, HubMixin
from grn.pipeline_output import PipelineOutput
from grn.sampling.config import SamplerConfig
from grn.sampling.refine import RefineStep
from grn.sampling.region import latent_region, region_condition
from grn.sampling.text import sample_t2iv

TEXT_TASKS = ("t2i", "t2v", "i2v")


def first_frame_tensor(path: str | Path, height: int, width: int) -> torch.Tensor:
    """The official I2V first-frame read (§B3, ``infer.py:transform``): the image as RGB (EXIF orientation applied,
    as ``cv2.imread`` does), resized with LANCZOS to cover ``height × width`` — the width fixed where
    ``w0 / h0 <= width / height``, the other side ``int(np.round(...))`` of the official expression — then
    centre-cropped by ``(size - target) // 2`` and mapped to [-1, 1]. Returns float ``[1, 3, height, width]``."""
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"first frame {path} not found (first_frame_path=)")
    try:
        with Image.open(path) as raw:
            img = ImageOps.exif_transpose(raw).convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read the first frame {path} as an image: {err}") from None
    return cover_crop(img, height, width)


def cover_crop(img, height: int, width: int) -> torch.Tensor:
    """A PIL RGB image -> float ``[1, 3, height, width]`` in [-1, 1] by the official ``transform`` (see
    :func:`first_frame_tensor`), with its float expressions, so the rounding is the official one."""
    from PIL import Image

    w0, h0 = img.size
    if w0 / h0 <= width / height:  # narrower than the target: the width fixed
        size = (width, int(np.round(width / (w0 / h0))))
    else:
        size = (int(np.round((w0 / h0) * height)), height)
    arr = np.asarray(img.resize(size, resample=Image.LANCZOS))
    top, left = (arr.shape[0] - height) // 2, (arr.shape[1] - width) // 2
    x = torch.from_numpy(np.array(arr[top : top + height, left : left + width])).permute(2, 0, 1)
    return (x.float().div(255) * 2 - 1).unsqueeze(0)


class TextPipeline(HubMixin):
    """A trained T2I/T2V network, its frozen caption encoder and the frozen tokenizer that decodes its labels.

    ``task`` sets the defaults of :meth:`__call__`: ``t2i`` one frame, ``t2v`` / ``i2v`` ``frames`` frames
    (``i2v`` expects a first frame). ``sampler`` / ``origin``: as :class:`grn.pipeline.GRNPipeline`'s
    (:meth:`save_pretrained` / :meth:`push_to_hub`, :mod:`grn.pipeline_hub`).
    """

    def __init__(self, net: T2IVNet, text_encoder, tokenizer: torch.nn.Module, task: str = "t2i",
                 device: str | torch.device = "cpu", tokenizer_ckpt: str | None = None):
        if task not in TEXT_TASKS:
            raise ValueError(f"task must be one of {TEXT_TASKS}, got {task!r}")
        self.task = task
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.text_encoder = text_encoder.to(self.device)
        self.tokenizer = tokenizer.to(self.device).eval()
        self.tokenizer_ckpt = tokenizer_ckpt
        self.sampler: SamplerConfig | None = None
        self.origin: dict[str, Any] = {}
        if tokenizer.latent_dim != net.latent_dim or tokenizer.hbq_rounds != net.hbq_rounds:
            raise ValueError(f"tokenizer (d={tokenizer.latent_dim}, M={tokenizer.hbq_rounds}) does not match the "
                             f"network (d={net.latent_dim}, M={net.hbq_rounds})")
        self._memo: dict[str, torch.Tensor] = {}

    @classmethod
    def from_checkpoint(cls, ckpt: str | Path, task: str = "t2i", tokenizer_ckpt: str | Path | None = None,
                        ema: str | None = "ema1", device: str | torch.device = "cpu") -> "TextPipeline":
        """Load a T2I/T2V training checkpoint, the caption encoder its config names (a registered grn text
        encoder: :func:`grn.checkpoints.build_from_config`) and its tokenizer."""
        from grn.checkpoints import build_from_config, load_t2iv, load_tokenizer

        net, hp = load_t2iv(ckpt, ema=ema)
        tok_path = tokenizer_ckpt or hp.get("tokenizer_ckpt")
        if not tok_path:
            raise ValueError(f"{ckpt} records no tokenizer checkpoint: pass tokenizer_ckpt=<path>")
        text_encoder = build_from_config(hp["text_encoder"], {"text_encoder"}, ckpt,
                                         "hyper_parameters.text_encoder")
        pipe = cls(net, text_encoder, load_tokenizer(tok_path), task, device, str(tok_path))
        pipe.origin = {"ckpt": str(ckpt), "tokenizer_ckpt": str(tok_path), "hparams": hp}
        return pipe

    def hub_network(self) -> T2IVNet:
        return self.net

    def grid_images(self, sampler: SamplerConfig, grid: dict[str, Any]) -> tuple[torch.Tensor, str]:
        """The model card's grid: one image per prompt (default :data:`TEXT_GRID_PROMPTS`, 256×256), seed 0; a
        video model is shown by single frames (its text-to-image use)."""
        prompts = list(grid.get("prompts", TEXT_GRID_PROMPTS))
        seed, height, width = int(grid.get("seed", 0)), int(grid.get("height", 256)), int(grid.get("width", 256))
        still = TextPipeline(self.net, self.text_encoder, self.tokenizer, "t2i", self.device)
        still._memo = self._memo
        images = still(prompts, seed=seed, height=height, width=width, frames=1, sampler=sampler).images
        return images, f"Prompts {prompts}, {height}x{width}, seed {seed}, the sampler defaults below."

    def encode(self, captions: list[str]) -> list[torch.Tensor]:
        """Caption features ``[L_i, D]`` float32, each distinct caption encoded once per pipeline."""
        return encode_memoized(self.text_encoder, self._memo, captions, self.device)

    def latent_region(self, mask: torch.Tensor) -> torch.Tensor:
        """Pixel mask ``[B, 1, H, W]`` (True/1 = regenerate) -> token mask ``[B, 1, h, w]``: a token is
        regenerated if any pixel of its patch is masked (as :meth:`GRNPipeline.latent_region`)."""
        return latent_region(mask, self.tokenizer.spatial_stride)

    def latent_frames(self, frames: int) -> int:
        stride = self.tokenizer.temporal_stride
        if frames < 1 or (frames - 1) % stride:
            raise ValueError(f"frames must be 1 + {stride}·k (the tokenizer's temporal stride), got {frames}")
        return 1 + (frames - 1) // stride

    @torch.no_grad()
    def __call__(
        self,
        prompts: list[str] | str,
        seed: int = 0,
        height: int = 256,
        width: int = 256,
        frames: int | None = None,
        negative_prompt: str = "",
        image: Any = None,
        progress: bool = False,
        sampler: SamplerConfig | None = None,
        init: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        init_labels: torch.Tensor | None = None,
        on_step: Callable[[RefineStep], None] | None = None,
        **overrides: Any,
    ) -> PipelineOutput:
        """Generate one image (t2i) or clip (t2v / i2v) per prompt; same seed and device -> same output.

        Args:
            prompts: captions (one per output).
            height, width: output size in pixels (multiples of the tokenizer's spatial stride).
            frames: clip length ``1 + 4k`` (default 1 for t2i, 17 otherwise).
            negative_prompt: the unconditional branch of guidance (official default ``""``).
            image: image-to-video: the first frame, ``[B or 1, 3, height, width]`` in [-1, 1], or an image file /
                PIL image (read as the official pipeline does, :func:`first_frame_tensor`: LANCZOS cover resize and
                centre crop to ``height × width``). It is encoded once as a 1-frame clip and its labels are the
                output's first latent frame; the network sees it in its ``i2v_mode`` form (``i2v_mode=`` /
                ``sampler.i2v_mode`` overrides; :mod:`grn.sampling.text`).
            init, mask: region re-generation of an image (one frame, not with ``image``): ``init`` pixels
                ``[B or 1, 3, height, width]`` in [-1, 1] and ``mask`` ``[B or 1, 1, height, width]``, nonzero
                where to regenerate (rounded up to whole tokens, :meth:`latent_region`); every token outside
                keeps the encoded labels of ``init`` exactly. ``init_labels`` (index labels
                ``[B or 1, d, h, w]``, e.g. an earlier sample's) may stand in for ``init``.
            on_step: called after each refinement step with a :class:`~grn.sampling.refine.RefineStep`.
            sampler: the settings (:class:`~grn.sampling.config.SamplerConfig`, default: ``self.sampler``, else
                its defaults, so
                ``schedule=linear``; the official T2I/T2V settings, as ``conf/task/t2i.yaml``, use ``cosine``);
            overrides: config keys on top (num_steps, schedule, keep_prob_shift, cfg_scale, ...). ``sampler.seed`` is
                not read: ``seed`` seeds the draws.
        Returns:
            :class:`grn.pipeline_output.PipelineOutput` with ``images`` ``[B, 3, H, W]`` (t2i) or ``[B, 3, T, H, W]``.
        """
        cfg = self.default_sampler(sampler, **overrides)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        s = self.tokenizer.spatial_stride
        if height % s or width % s:
            raise ValueError(f"height and width must be multiples of {s}, got {height}x{width}")
        if self.task == "i2v" and image is None:
            raise ValueError("task i2v needs image=<first frame>")
        frames = frames or (1 if self.task == "t2i" and image is None else 17)
        lat_t = self.latent_frames(frames)
        c = self.net.label_channels
        shape = (c, height // s, width // s) if lat_t == 1 and image is None else (c, lat_t, height // s, width // s)
        first = known = region = None
        if mask is not None and (image is not None or lat_t != 1):
            raise ValueError("region re-generation works on images: give init/mask without image and frames")
        known, region = region_condition(self.tokenizer, len(prompts), (height, width), init, mask,
                                         init_labels, self.device)
        if image is not None and not isinstance(image, torch.Tensor):
            image = first_frame_tensor(image, height, width) if isinstance(image, (str, Path)) else \
                cover_crop(image.convert("RGB"), height, width)
        if image is not None:
            if image.shape[-2:] != (height, width):
                raise ValueError(f"the first frame must be {height}x{width}, got {list(image.shape)}")
            first = self.tokenizer.encode(image.to(self.device).unsqueeze(2), target="index")[:, :, 0]
            first = first.expand(len(prompts), -1, -1, -1)
            if self.net.target == "bits":
                first = hbq.index_labels_to_bit_labels(first, self.net.hbq_rounds)
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(f"refining {len(prompts)} sample(s)", total=cfg.max_steps)
            result = sample_t2iv(self.net, self.encode, prompts, shape, g, negative_prompt, first, cfg,
                                 callback=lambda i: bar.advance(task), on_step=on_step, known=known,
                                 region=region)
        features = hbq.dequantize(result.labels, self.net.hbq_rounds, "index")
        images = self.tokenizer.decode(features).clamp(-1, 1)
        return PipelineOutput.of(images, result)
