"""Reconstruction quality of a tokenizer: PSNR and L1 on images in [-1, 1]."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio

__all__ = ["psnr", "psnr_per_image", "reconstruction_metrics"]


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


@torch.no_grad()
def reconstruction_metrics(
    tokenizer: nn.Module, images: Tensor, batch_size: int = 64, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Encode → quantize → decode ``images [N, 3, H, W]`` in [-1, 1] and score the reconstructions.

    Runs ``tokenizer(batch, quantize=True) -> (x_rec, features, features_q)`` under ``no_grad`` in eval mode
    (the previous mode is restored afterwards). Batches are moved to ``device``; the tokenizer must already
    live there. Reconstructions are clamped to [-1, 1] before scoring.

    Returns:
        ``{"psnr": mean per-image PSNR in dB on the [0, 1] scale, "l1": mean absolute error on the [-1, 1]
        scale}``, both averaged over all ``N`` images.
    """
    n = images.shape[0]
    if n == 0:
        raise ValueError("reconstruction_metrics needs at least one image")
    was_training = tokenizer.training
    tokenizer.eval()  # dropout / batch-norm must not change reconstructions while scoring
    psnr_sum, l1_sum = 0.0, 0.0
    try:
        for i in range(0, n, batch_size):
            x = images[i : i + batch_size].to(device)
            x_rec = tokenizer(x, quantize=True)[0].float().clamp(-1.0, 1.0)
            # sums of per-image values, so the final mean is over images whatever the last batch's size
            psnr_sum += psnr_per_image(x_rec, x).double().sum().item()
            l1_sum += (x_rec - x.float()).abs().flatten(1).mean(dim=1).double().sum().item()
    finally:
        tokenizer.train(was_training)
    return {"psnr": psnr_sum / n, "l1": l1_sum / n}
