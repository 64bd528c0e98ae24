"""Reconstruction quality of a tokenizer on images (or videos, frame by frame) in [-1, 1].

PSNR and SSIM (torchmetrics, on the [0, 1] scale), L1, and optionally LPIPS (:mod:`grn.losses.perceptual`), rFID
(FID between the reconstructions and the originals through a torch-fidelity feature extractor, on the uint8 values a
PNG stores) and, for videos, rFVD through a pluggable clip-level feature network (the ``video_features`` hook: any
module mapping ``uint8 [B, 3, T, H, W]`` to ``[B, D]``, e.g. an I3D the user provides — none ships here), and
the side-by-side picture of originals and reconstructions (a PNG, or an MP4 for videos) that ``eval.py
task=tokenizer`` and the ``ReconstructionGrid`` callback write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

__all__ = [
    "frames",
    "psnr",
    "psnr_per_image",
    "reconstruct",
    "reconstruction_metrics",
    "side_by_side",
    "ssim_per_image",
    "write_mp4",
]


def frames(x: Tensor) -> Tensor:
    """Videos ``[B, C, T, H, W]`` → frames ``[B·T, C, H, W]``; images pass through."""
    if x.ndim == 5:
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w)
    return x


def ssim_per_image(x: Tensor, y: Tensor) -> Tensor:
    """SSIM per image ``float32 [B]`` of ``x, y [B, C, H, W]`` in [-1, 1], on the [0, 1] scale (11×11 Gaussian)."""
    x01, y01 = (x.float() + 1.0) / 2.0, (y.float() + 1.0) / 2.0
    side = min(11, x.shape[-1], x.shape[-2])
    kernel = side if side % 2 else side - 1  # the standard 11×11 window, shrunk (odd) for tiny images
    return structural_similarity_index_measure(x01, y01, data_range=1.0, reduction="none", kernel_size=kernel)


def psnr_per_image(x: Tensor, y: Tensor) -> Tensor:
    """PSNR in dB per image, ``float32 [B]``, for ``x, y [B, C, H, W]`` in [-1, 1].

    Measured on the [0, 1] scale (data range 1), the usual convention for reported PSNR:
    ``10·log10(1 / mse)``. Identical images give ``inf``.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"psnr expects two [B, C, H, W] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x01 = (x.float() + 1.0) / 2.0
    y01 = (y.float() + 1.0) / 2.0
    return peak_signal_noise_ratio(x01, y01, data_range=1.0, reduction="none", dim=(1, 2, 3))


def psnr(x: Tensor, y: Tensor) -> float:
    """Mean over images of the per-image PSNR (dB) of ``x, y [B, C, H, W]`` in [-1, 1].

    Averaging per-image PSNR (rather than taking the PSNR of the pooled MSE) is the convention of
    tokenizer papers. See ``psnr_per_image``.
    """
    return psnr_per_image(x, y).mean().item()


def _clips_uint8(videos: Tensor) -> Tensor:
    """Videos ``[B, 3, T, H, W]`` in [-1, 1] → ``uint8 [B, 3, T, H, W]`` (what the rFVD hook takes)."""
    from grn.metrics.fid import to_uint8

    b, _, t, h, w = videos.shape
    return to_uint8(frames(videos)).view(b, t, 3, h, w).transpose(1, 2)


@torch.no_grad()
def reconstruct(tokenizer: nn.Module, images: Tensor, device: str | torch.device = "cpu") -> Tensor:
    """Encode → quantize → decode ``images [B, 3, (T,) H, W]`` in eval mode → reconstructions clamped to [-1, 1]."""
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        return tokenizer(images.to(device), quantize=True)[0].float().clamp(-1.0, 1.0)
    finally:
        tokenizer.train(was_training)


@torch.no_grad()
def reconstruction_metrics(
    tokenizer: nn.Module,
    images: Tensor,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    lpips: nn.Module | None = None,
    feature_extractor: Any = None,
    video_features: nn.Module | None = None,
) -> dict[str, float]:
    """Encode → quantize → decode ``images [N, 3, H, W]`` (or videos ``[N, 3, T, H, W]``) in [-1, 1] and score.

    Runs ``tokenizer(batch, quantize=True) -> (x_rec, features, features_q)`` under ``no_grad`` in eval mode
    (the previous mode is restored afterwards). Batches are moved to ``device``; the tokenizer (and the optional
    metric networks) must already live there. Reconstructions are clamped to [-1, 1] before scoring.

    Args:
        lpips: an LPIPS module (``forward(x, y) -> [B]`` or ``[B, T]``); adds ``"lpips"``.
        feature_extractor: a torch-fidelity extractor (:func:`grn.metrics.fid.build_feature_extractor`); adds
            ``"rfid"`` — FID of the reconstructed frames against the original frames.
        video_features: the rFVD hook, ``uint8 [B, 3, T, H, W] -> [B, D]``; adds ``"rfvd"`` for videos.

    Returns:
        ``{"psnr": mean per-image (per-frame) PSNR in dB on the [0, 1] scale, "ssim": mean SSIM, "l1": mean
        absolute error on the [-1, 1] scale, ...}``, averaged over all images (frames).
    """
    from grn.metrics.fid import FeatureStats, FidIsAccumulator, frechet_distance, to_uint8

    n = images.shape[0]
    if n == 0:
        raise ValueError("reconstruction_metrics needs at least one image")
    video = images.ndim == 5
    sums = {"psnr": 0.0, "ssim": 0.0, "l1": 0.0, "lpips": 0.0}
    count = 0
    real_acc = fake_acc = None
    if feature_extractor is not None:
        real_acc, fake_acc = FidIsAccumulator(feature_extractor, 1), FidIsAccumulator(feature_extractor, 1)
    real_clips = fake_clips = None
    for i in range(0, n, batch_size):
        x = images[i : i + batch_size].to(device)
        x_rec = reconstruct(tokenizer, x, device)
        xf, rf = frames(x.float()), frames(x_rec)
        # sums of per-image values, so the final mean is over images whatever the last batch's size
        sums["psnr"] += psnr_per_image(rf, xf).double().sum().item()
        sums["ssim"] += ssim_per_image(rf, xf).double().sum().item()
        sums["l1"] += (rf - xf).abs().flatten(1).mean(dim=1).double().sum().item()
        if lpips is not None:
            sums["lpips"] += lpips(rf, xf).double().sum().item()
        if real_acc is not None:
            idx = torch.arange(count, count + len(xf))
            real_acc.update(to_uint8(xf), idx)
            fake_acc.update(to_uint8(rf), idx)
        if video and video_features is not None:
            fr, ff = video_features(_clips_uint8(x.float())), video_features(_clips_uint8(x_rec))
            if real_clips is None:
                real_clips, fake_clips = (
                    FeatureStats(fr.shape[1], fr.device),
                    FeatureStats(ff.shape[1], ff.device),
                )
            real_clips.update(fr)
            fake_clips.update(ff)
        count += len(xf)
    out = {k: v / count for k, v in sums.items() if k != "lpips" or lpips is not None}
    if real_acc is not None:
        out["rfid"] = frechet_distance(*fake_acc.fid.mu_sigma(), *real_acc.fid.mu_sigma())
    if real_clips is not None:
        out["rfvd"] = frechet_distance(*fake_clips.mu_sigma(), *real_clips.mu_sigma())
    return out


def side_by_side(images: torch.Tensor, recon: torch.Tensor, path: Path) -> Path:
    """Images: a PNG with the originals in the top row(s) and the reconstructions below. Videos: an MP4 whose
    frames show every original clip next to its reconstruction."""
    from torchvision.utils import make_grid, save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    if images.ndim == 4:
        n = len(images)
        grid = torch.cat([images, recon.cpu()])
        save_image(((grid + 1) / 2).clamp(0, 1), path.with_suffix(".png"), nrow=n, padding=2, pad_value=0.5)
        return path.with_suffix(".png")
    from grn.metrics.fid import to_uint8

    # [N, 3, T, H, W] -> per frame t, a grid of 2 rows (originals, reconstructions)
    pair = torch.cat([images, recon.cpu()])  # [2N, 3, T, H, W]
    grids = [
        make_grid(pair[:, :, t], nrow=len(images), padding=2, pad_value=0.5) for t in range(pair.shape[2])
    ]
    write_mp4(to_uint8(torch.stack(grids)), path.with_suffix(".mp4"))
    return path.with_suffix(".mp4")


def write_mp4(frames: torch.Tensor, path: Path, fps: int = 8) -> None:
    """``uint8 [T, 3, H, W]`` → an H.264 (or MPEG-4 where libx264 is absent) MP4 via PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[-2] // 2 * 2, frames.shape[-1] // 2 * 2  # yuv420p needs even sides
    with av.open(str(path), mode="w") as out:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for f in frames[:, :, :h, :w]:
            frame = av.VideoFrame.from_ndarray(f.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
