"""PSNR / L1 reconstruction metrics against closed forms."""

import math

import pytest
import torch
from torch import nn

from grn.metrics.recon import psnr, psnr_per_image, reconstruction_metrics


def test_psnr_identical_is_infinite():
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    assert psnr(x, x.clone()) == math.inf


def test_psnr_matches_closed_form_on_01_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 16, 16, generator=g) * 2 - 1
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    mse01 = (((x + 1) / 2 - (y + 1) / 2) ** 2).flatten(1).mean(1)  # per image, on the [0, 1] scale
    expected = (10 * torch.log10(1 / mse01)).mean().item()
    assert psnr(x, y) == pytest.approx(expected, abs=1e-3)
    # a constant offset of 0.2 on [-1, 1] is 0.1 on [0, 1]: mse = 0.01 -> exactly 20 dB
    z = torch.zeros(2, 3, 4, 4)
    assert psnr(z, z + 0.2) == pytest.approx(20.0, abs=1e-4)
    assert psnr_per_image(z, z + 0.2).shape == (2,)


def test_psnr_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape|one shape"):
        psnr(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))


class _NoisyIdentity(nn.Module):
    """Stand-in tokenizer with the HBQTokenizer forward: ``(x, quantize) -> (x_rec, features, features_q)``.

    Reconstructs with a fixed offset and records each call.
    """

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset
        self.calls: list[tuple[int, bool, bool, bool]] = []

    def forward(self, x, quantize=True):
        self.calls.append((x.shape[0], quantize, self.training, torch.is_grad_enabled()))
        f = torch.tanh(x[:, :, ::4, ::4])
        return x + self.offset, f, f.sign()


def test_reconstruction_metrics_batches_clamps_and_averages():
    x = torch.zeros(10, 3, 8, 8)
    x[:5] = 0.9  # the +0.2 offset overshoots here; clamping to 1 leaves an error of only 0.1
    tok = _NoisyIdentity(0.2).train()
    m = reconstruction_metrics(tok, x, batch_size=4)
    assert set(m) == {"psnr", "ssim", "l1"}
    assert 0 < m["ssim"] < 1
    # per image on [-1,1]: the first five err 0.1 (clamped) -> 0.05 on [0,1] -> 26.02 dB;
    # the last five err 0.2 -> 0.1 on [0,1] -> 20 dB
    assert m["l1"] == pytest.approx((5 * 0.1 + 5 * 0.2) / 10, abs=1e-6)
    assert m["psnr"] == pytest.approx((10 * math.log10(1 / 0.05**2) + 20.0) / 2, abs=1e-3)
    assert [c[0] for c in tok.calls] == [4, 4, 2]
    assert all(q and not training and not grad for _, q, training, grad in tok.calls)
    assert tok.training  # mode restored


def test_reconstruction_metrics_perfect_tokenizer():
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    m = reconstruction_metrics(_NoisyIdentity(0.0), x)
    assert m["psnr"] == math.inf and m["l1"] == 0.0 and m["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_ssim_matches_closed_form_extremes_and_orders_noise():
    from grn.metrics.recon import ssim_per_image

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(ssim_per_image(x, x), torch.ones(2), atol=1e-6)
    little = ssim_per_image((x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1), x)
    much = ssim_per_image((x + 0.5 * torch.randn(x.shape, generator=g)).clamp(-1, 1), x)
    assert (much < little).all() and (little < 1).all()


def test_video_metrics_fold_frames_and_rfvd_hook():
    """Videos [N, 3, T, H, W] are scored per frame; the rFVD hook gets uint8 clips and yields a Fréchet distance."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 2, 8, 8, generator=g) * 1.6 - 0.8
    seen = []

    class ClipFeatures(nn.Module):
        def forward(self, clips):
            seen.append((clips.dtype, tuple(clips.shape)))
            return clips.float().mean(dim=(2, 3, 4))  # [B, 3]: mean colour of the clip

    m = reconstruction_metrics(_NoisyIdentity(0.1), x, batch_size=4, video_features=ClipFeatures())
    assert m["l1"] == pytest.approx(0.1, abs=1e-5)
    assert m["psnr"] == pytest.approx(26.0206, abs=1e-3)  # 0.05 error on [0, 1] everywhere
    assert seen[0] == (torch.uint8, (4, 3, 2, 8, 8))
    # every clip brighter by 0.1 on [-1, 1] = 12.75 uint8 levels in each of 3 channels: FVD = 3 * 12.75^2 (+ rounding)
    assert m["rfvd"] == pytest.approx(3 * 12.75**2, rel=0.05)
