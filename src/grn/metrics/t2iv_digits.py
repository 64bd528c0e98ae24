"""What a T2I / T2V model learned on captioned (moving) digits, measured on generated pixels.

``python eval.py task=t2i|t2v ckpt=...`` (the ``eval_t2iv`` entry point) and, for the run directory of
``train.py experiment=t2iv_digits``, ``python scripts/t2iv_digits_eval.py runs/t2iv_digits`` call this module:

* T2I (:func:`evaluate_t2i`): for each digit, ``per_caption`` images from "a handwritten <digit>"; the digits
  classifier (trained on the real digits, independent of the generator) reads them: caption-conditional accuracy
  (chance 0.1).
* T2V (:func:`evaluate_t2v`): for each digit and direction, clips from "a handwritten <digit> moving <direction>";
  the direction is read from the ink centroid's motion between the first and the last frame (chance 0.25), the
  digit by the classifier on a ``digit_size`` window around the centroid of the middle frame, scaled to 32×32
  (chance 0.1).
* I2V (:func:`evaluate_i2v`, also run by :func:`evaluate_t2v`): the same clips generated from the first frame of
  real held-out clips (its latent frame given, in the network's ``i2v_mode`` form or ``sampler["i2v_mode"]``):
  direction accuracy from the caption, and the share of first frames returned bit-identical.

Each returns ``(metrics, grids)``: the metrics under the task's key (``{"t2i": {...}}``, ``{"t2v": ..., "i2v":
...}``) and the sample grids (:func:`save_grid`). The text → labels sampler is passed in (:class:`TextModel`), so
this module imports no training code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grn import hbq
from grn.checkpoints import build_from_config, load_t2iv
from grn.datamodules.captioned import DIGIT_WORDS, DIRECTIONS, moving_digits
from grn.metrics.digits import predict
from grn.prompts import ensure_prefix, sample_task

__all__ = [
    "SIZE",
    "TextModel",
    "caption_encoder",
    "centroids",
    "describe",
    "digit_windows",
    "evaluate_i2v",
    "evaluate_t2i",
    "evaluate_t2v",
    "load_with_encoder",
    "read_direction",
    "save_grid",
]

SIZE = 32  # the captioned digits are 32×32
Grid = tuple[torch.Tensor, int]  # images [N, 3, H, W] in [0, 1] and the images per row


def centroids(frames: torch.Tensor) -> torch.Tensor:
    """Ink centroid (x, y) per image: ``[N, S, S]`` in [-1, 1] -> ``[N, 2]``."""
    ink = ((frames + 1) / 2).clamp_min(0)
    coords = torch.arange(frames.shape[-1], dtype=torch.float32)
    mass = ink.sum((-1, -2)).clamp_min(1e-6)
    return torch.stack([(ink.sum(-2) * coords).sum(-1) / mass, (ink.sum(-1) * coords).sum(-1) / mass], -1)


def read_direction(clips: torch.Tensor) -> torch.Tensor:
    """Direction index (into ``DIRECTIONS``) per clip ``[N, 3, T, S, S]`` from the centroid motion of the grey
    frames."""
    grey = clips.mean(1)
    move = centroids(grey[:, -1]) - centroids(grey[:, 0])  # [N, 2]
    horizontal = move[:, 0].abs() >= move[:, 1].abs()
    return torch.where(horizontal, torch.where(move[:, 0] < 0, 0, 1), torch.where(move[:, 1] < 0, 2, 3))


def digit_windows(frames: torch.Tensor, window: int = 16, size: int = 32) -> torch.Tensor:
    """A ``window``-px crop around each frame's ink centroid, scaled to ``size``: ``[N, 3, S, S]`` -> same."""
    n, _, s, _ = frames.shape
    c = centroids(frames.mean(1))  # [N, 2] pixel centre of ink
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = window / s
    theta[:, :, 2] = (c + 0.5) * (2.0 / s) - 1.0
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample((frames + 1) / 2, grid, align_corners=False) * 2 - 1


def caption_encoder(hp: dict, ckpt: str | Path) -> Callable[[list[str]], list[torch.Tensor]]:
    """The caption encoder of a T2I/T2V checkpoint (a registered grn text encoder), as ``captions -> [L_i, D]``."""
    enc = build_from_config(hp["text_encoder"], {"text_encoder"}, ckpt, "hyper_parameters.text_encoder")
    return lambda caps: [f.float() for f in enc.encode_texts(caps)]


def load_with_encoder(ckpt: str | Path, ema: str | None = "ema1", with_hparams: bool = False):
    """A T2I/T2V checkpoint's network and its caption encoder: ``(net, encode)`` (``+ (hparams,)``)."""
    net, hp = load_t2iv(ckpt, ema)
    return (net, caption_encoder(hp, ckpt), hp) if with_hparams else (net, caption_encoder(hp, ckpt))


@dataclass
class TextModel:
    """A T2I/T2V network, its caption encoder and tokenizer, and the sampler that maps captions to index labels
    (``sample(net, encode, captions, label_shape, generator, first_frame=None, **sampler)`` returning an object
    with ``labels``; today :func:`grn.sampling.text.sample_t2iv`)."""

    net: nn.Module
    encode: Callable[[list[str]], list[torch.Tensor]]
    tokenizer: nn.Module
    sample: Callable[..., Any]
    prompt_prefix: bool = False  # the model was trained on <T2I> / <T2V> captions (its hyper_parameters say so)
    i2v_ratio: float = 0.0       # ... and on <I2V> first-frame captions

    @classmethod
    def from_hparams(cls, net, encode, tokenizer, sample, hp: dict) -> "TextModel":
        """A model whose prompts get the prefixes its checkpoint's ``hyper_parameters`` record."""
        return cls(net, encode, tokenizer, sample, bool(hp.get("prompt_prefix")), float(hp.get("i2v_ratio") or 0))

    @torch.no_grad()
    def pixels(self, captions: Sequence[str], shape: Sequence[int], seed: int, sampler: dict,
               first_frame: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """Samples for ``captions`` (one generator seeded ``seed``), decoded: ``(pixels in [-1, 1], result)``."""
        if self.prompt_prefix:
            task = sample_task(len(shape) == 3, first_frame is not None, self.i2v_ratio)
            captions = [ensure_prefix(c, task) for c in captions]
        g = torch.Generator().manual_seed(seed)
        res = self.sample(self.net, self.encode, captions, shape, g, first_frame=first_frame, **sampler)
        feats = hbq.dequantize(res.labels, self.net.hbq_rounds, "index")
        return self.tokenizer.decode(feats).clamp(-1, 1), res


def _caption(digit: int, direction: int | None = None) -> str:
    text = f"a handwritten {DIGIT_WORDS[digit]}"
    return text if direction is None else f"{text} moving {DIRECTIONS[direction]}"


@torch.no_grad()
def evaluate_t2i(model: TextModel, classifier: nn.Module, per_caption: int = 10, seed: int = 0,
                 sampler: dict | None = None) -> tuple[dict, dict[str, Grid]]:
    """Caption-conditional accuracy of ``10 × per_caption`` images; the grid: every ``per_caption // 5``-th image."""
    s = model.tokenizer.spatial_stride
    classes = torch.arange(10).repeat_interleave(per_caption)
    captions = [_caption(c) for c in classes.tolist()]
    images, _ = model.pixels(captions, (model.net.label_channels, SIZE // s, SIZE // s), seed, sampler or {})
    pred = predict(classifier, images)
    metrics = {"caption_accuracy": (pred == classes).float().mean().item(),
               "per_digit": [(pred[classes == c] == c).float().mean().item() for c in range(10)]}
    grid = ((images[:: max(1, per_caption // 5)] + 1) / 2, 10 if per_caption >= 5 else per_caption)
    return {"t2i": metrics}, {"t2i": grid}


def _frames_grid(clips: torch.Tensor, frames: int) -> Grid:
    """Clips ``[N, 3, T, S, S]`` -> one row of frames per clip."""
    return (clips.permute(0, 2, 1, 3, 4).reshape(-1, 3, SIZE, SIZE) + 1) / 2, frames


@torch.no_grad()
def evaluate_t2v(model: TextModel, classifier: nn.Module, per_caption: int = 10, seed: int = 0,
                 sampler: dict | None = None, frames: int = 5, digit_size: int = 24,
                 i2v_clips: int = 40) -> tuple[dict, dict[str, Grid]]:
    """T2V direction and digit accuracy of ``40 × max(1, per_caption // 4)`` clips, then I2V from the first frames
    of ``i2v_clips`` real held-out clips. ``frames`` (1 + 4k) and ``digit_size`` as the data config."""
    sampler = sampler or {}
    tok, net = model.tokenizer, model.net
    s = tok.spatial_stride
    lat_t = 1 + (frames - 1) // tok.temporal_stride
    combos = [(d, k) for d in range(10) for k in range(4)]
    n_each = max(1, per_caption // 4)
    digits = torch.tensor([d for d, _ in combos]).repeat_interleave(n_each)
    dirs = torch.tensor([k for _, k in combos]).repeat_interleave(n_each)
    captions = [_caption(d, k) for d, k in zip(digits.tolist(), dirs.tolist())]
    shape = (net.label_channels, lat_t, SIZE // s, SIZE // s)
    clips, _ = model.pixels(captions, shape, seed, sampler)
    got_dir = read_direction(clips)
    got_digit = predict(classifier, digit_windows(clips[:, :, frames // 2], window=digit_size))
    metrics = {"t2v": {"direction_accuracy": (got_dir == dirs).float().mean().item(),
                       "digit_accuracy": (got_digit == digits).float().mean().item(), "clips": len(captions)}}
    pick = torch.arange(0, len(captions), n_each * 4)[:10]  # one clip per digit
    grids = {"t2v": _frames_grid(clips[pick], frames)}
    metrics["i2v"], grids["i2v"] = evaluate_i2v(model, i2v_clips, seed, sampler, frames, digit_size)
    return metrics, grids


@torch.no_grad()
def evaluate_i2v(model: TextModel, clips: int = 40, seed: int = 0, sampler: dict | None = None, frames: int = 5,
                 digit_size: int = 24) -> tuple[dict, Grid]:
    """Image-to-video from the first frames of ``clips`` real held-out moving-digits clips (at most 360), each
    with the caption of its own digit and direction: ``({"direction_accuracy", "first_frame_labels_identical",
    "clips", "i2v_mode"}, grid of the first 5)``. ``sampler["i2v_mode"]`` (or the network's) picks the form."""
    sampler = sampler or {}
    tok, net = model.tokenizer, model.net
    s = tok.spatial_stride
    shape = (net.label_channels, 1 + (frames - 1) // tok.temporal_stride, SIZE // s, SIZE // s)
    real, real_digits, real_dirs, _ = moving_digits("val", frames=frames, digit_size=digit_size)
    real, real_digits, real_dirs = real[:clips], real_digits[:clips], real_dirs[:clips]
    first = tok.encode(real[:, :, :1], target="index")  # [B, d, 1, h, w] latent frame 0
    first_net = hbq.index_labels_to_bit_labels(first, net.hbq_rounds) if net.target == "bits" else first
    caps = [_caption(d, k) for d, k in zip(real_digits.tolist(), real_dirs.tolist())]
    i2v, res = model.pixels(caps, shape, seed, sampler, first_frame=first_net[:, :, 0])
    kept = (res.labels[:, :, :1] == first).flatten(1).all(1).float().mean().item()
    metrics = {"direction_accuracy": (read_direction(i2v) == real_dirs).float().mean().item(),
               "first_frame_labels_identical": kept, "clips": len(caps),
               "i2v_mode": sampler.get("i2v_mode") or getattr(net, "i2v_mode", "region")}
    return metrics, _frames_grid(i2v[:5], frames)


def describe(metrics: dict) -> list[str]:
    """One line per measured task, e.g. ``T2I caption-conditional accuracy 0.870``."""
    lines = []
    if "t2i" in metrics:
        lines.append(f"T2I caption-conditional accuracy {metrics['t2i']['caption_accuracy']:.3f}")
    if "t2v" in metrics:
        lines.append(f"T2V direction accuracy {metrics['t2v']['direction_accuracy']:.3f}, "
                     f"digit accuracy {metrics['t2v']['digit_accuracy']:.3f}")
    if "i2v" in metrics:
        lines.append(f"I2V direction accuracy {metrics['i2v']['direction_accuracy']:.3f}, "
                     f"first frame kept {metrics['i2v']['first_frame_labels_identical']:.3f}")
    return lines


def save_grid(grid: Grid, path: Path) -> Path:
    """Write a grid of :func:`evaluate_t2i` / :func:`evaluate_t2v` as a PNG."""
    from torchvision.utils import save_image

    images, nrow = grid
    save_image(images, path, nrow=nrow)
    return path
