"""HBQ tokenizer: a causal 3-D conv autoencoder whose latent is squashed by tanh and quantised by HBQ.

The layout follows the official tokenizer (a Wan-2.2-style VAE; see reference facts §2): optional 2×2
patchify, a causal 3-D conv encoder with RMS-normalised residual blocks, a middle Res/Attention/Res block, a
head producing the latent, and a mirrored decoder. Pixels are ``[B, 3, T, H, W]`` videos; an image is a
1-frame video, and because every convolution is causal in time, a video's first frame is encoded exactly like
the image alone.

Stride rule (the Wan one, so full-size configs can reuse the official layout): every encoder stage except
the last halves H and W, and patchify divides them by ``patch_size`` first::

    spatial_stride = patch_size * 2 ** (len(channel_mult) - 1)

e.g. ``patch_size=1, channel_mult=(1, 2, 2)`` gives 4 (32×32 → 8×8); the official ``patch_size=2,
channel_mult=(1, 2, 4, 4)`` gives 16. There is no temporal down-sampling yet (temporal stride 1).

Departures from the official network, on purpose: the encoder head emits exactly ``latent_dim`` channels (the
official one emits 2d, applies a 1×1×1 conv and throws the log-variance half away; that conv folds exactly
into the head when converting weights); the parameter-free AvgDown3D / DupUp3D shortcuts are not there yet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from grn import hbq

__all__ = [
    "CausalConv3d",
    "RMSNorm",
    "ResidualBlock",
    "AttentionBlock",
    "Resample",
    "DownStage",
    "UpStage",
    "Encoder3d",
    "Decoder3d",
    "HBQTokenizer",
    "patchify",
    "unpatchify",
]


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class CausalConv3d(nn.Conv3d):
    """3-D convolution that only looks at the present and the past in time.

    Time is padded by ``2 * padding_t`` frames on the left and none on the right; H and W are padded
    symmetrically. ``x`` is ``[B, C, T, H, W]`` → ``[B, C_out, T', H', W']`` (T' = T for stride 1).

    ``cache_x`` (``[B, C, t, H, W]``, the last input frames of the previous chunk) replaces that many frames
    of the left padding, so a video can later be processed in chunks with the same result as in one go.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, **kwargs)
        pt, ph, pw = _triple(padding)
        self._time_pad = 2 * pt
        self._pad = (pw, pw, ph, ph, 2 * pt, 0)  # F.pad order: W, H, T (left, right)

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        single_frame_exact = self.stride[0] == 1 and self._time_pad == self.dilation[0] * (
            self.kernel_size[0] - 1
        )
        if cache_x is None and x.shape[2] == 1 and single_frame_exact:
            # A single frame only meets the last temporal tap (the others see zero padding): a 2-D conv gives
            # the same numbers at 1/k_t of the cost, which is the common case of image training.
            out = F.conv2d(
                x[:, :, 0],
                self.weight[:, :, -1],
                self.bias,
                stride=self.stride[1:],
                padding=(self._pad[2], self._pad[0]),
                dilation=self.dilation[1:],
                groups=self.groups,
            )
            return out.unsqueeze(2)
        pad = list(self._pad)
        if cache_x is not None and self._time_pad > 0:
            x = torch.cat([cache_x.to(x.dtype), x], dim=2)
            pad[4] = max(0, pad[4] - cache_x.shape[2])
        return super().forward(F.pad(x, pad))


class RMSNorm(nn.Module):
    """RMS normalisation over the channel axis (dim 1): ``F.normalize(x, dim=1) * sqrt(C) * gamma``.

    ``gamma`` has shape ``(C,) + (1,) * spatial_dims`` — ``(C, 1, 1, 1)`` for ``[B, C, T, H, W]`` conv
    features, ``(C, 1, 1)`` for ``[B, C, H, W]`` maps (``spatial_dims=2``), as in the official checkpoints.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, eps: float = 1e-12):
        super().__init__()
        self.scale = math.sqrt(channels)
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones((channels,) + (1,) * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1, eps=self.eps) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """norm → SiLU → conv3 → norm → SiLU → dropout → conv3, plus a 1×1×1 shortcut when the width changes.

    ``[B, C_in, T, H, W]`` → ``[B, C_out, T, H, W]``; ``residual.{0,2,3,6}`` are the official indices.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_channels),
            nn.SiLU(),
            CausalConv3d(in_channels, out_channels, 3, padding=1),
            RMSNorm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_channels, out_channels, 3, padding=1),
        )
        self.shortcut = (
            CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.residual(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention inside each frame (over its H·W positions), with a residual connection.

    ``[B, C, T, H, W]`` → same shape. Frames never attend to each other, so causality in time is kept. The
    output projection starts at zero, so the block starts as the identity.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = RMSNorm(channels, spatial_dims=2)
        self.to_qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames))  # [B*T, 3C, H, W]
        # [B*T, 3C, H*W] -> three [B*T, 1, H*W, C] tensors (one head)
        q, k, v = qkv.flatten(2).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        out = self.proj(out)
        return x + out.reshape(b, t, c, h, w).transpose(1, 2)


class Resample(nn.Module):
    """Per-frame spatial ×2 down- or up-sampling; ``[B, C, T, H, W]`` → ``[B, C, T, H/2, W/2]`` or ``2H, 2W``.

    Down: zero-pad right/bottom by one, then a stride-2 3×3 conv. Up: nearest ×2, then a 3×3 conv. Both work
    frame by frame, so they are causal in time; temporal resampling can be added here later.
    """

    def __init__(self, channels: int, mode: str):
        super().__init__()
        if mode == "down":
            self.resample = nn.Sequential(
                nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(channels, channels, 3, stride=2)
            )
        elif mode == "up":
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                nn.Conv2d(channels, channels, 3, padding=1),
            )
        else:
            raise ValueError(f"Resample mode must be 'down' or 'up', got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, y.shape[-2], y.shape[-1]).transpose(1, 2)


class DownStage(nn.Module):
    """One encoder stage: residual blocks, then (unless last) a spatial ×2 down-sample. Keys mirror the
    official ``downsamples.{i}.downsamples.{j}``; the official parameter-free AvgDown3D shortcut would go
    beside them."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsamples(x)


class UpStage(nn.Module):
    """One decoder stage: residual blocks, then (unless last) a spatial ×2 up-sample (official
    ``upsamples.{i}.upsamples.{j}``; the DupUp3D shortcut would sit beside it)."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsamples(x)


def _middle(channels: int, attention: bool, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        ResidualBlock(channels, channels, dropout),
        AttentionBlock(channels) if attention else nn.Identity(),
        ResidualBlock(channels, channels, dropout),
    )


def _head(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(channels), nn.SiLU(), CausalConv3d(channels, out_channels, 3, padding=1))


class Encoder3d(nn.Module):
    """``[B, C_in, T, H, W]`` → ``[B, C_out, T, H / 2^(S-1), W / 2^(S-1)]``, S = ``len(channel_mult)``.

    Stage i maps ``dims[i] → dims[i+1]`` (``dims = [ch·m_0] + [ch·m for m in channel_mult]``) with
    ``num_res_blocks`` residual blocks, then halves H, W unless it is the last stage.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attention: bool,
        dropout: float,
    ):
        super().__init__()
        dims = [channels * channel_mult[0]] + [channels * m for m in channel_mult]
        self.conv1 = CausalConv3d(in_channels, dims[0], 3, padding=1)
        stages = []
        for i in range(len(channel_mult)):
            blocks = [
                ResidualBlock(dims[i] if j == 0 else dims[i + 1], dims[i + 1], dropout)
                for j in range(num_res_blocks)
            ]
            if i < len(channel_mult) - 1:
                blocks.append(Resample(dims[i + 1], "down"))
            stages.append(DownStage(blocks))
        self.downsamples = nn.ModuleList(stages)
        self.middle = _middle(dims[-1], attention, dropout)
        self.head = _head(dims[-1], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.downsamples:
            x = stage(x)
        return self.head(self.middle(x))


class Decoder3d(nn.Module):
    """``[B, C_in, T, h, w]`` → ``[B, C_out, T, h·2^(S-1), w·2^(S-1)]``; mirror of :class:`Encoder3d`.

    Widths ``dims = [ch·m_last] + [ch·m for m in reversed(channel_mult)]``; stage i has ``num_res_blocks + 1``
    residual blocks, then doubles H, W unless it is the last stage (Wan-2.2 layout: upsampling keeps widths).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attention: bool,
        dropout: float,
    ):
        super().__init__()
        mult = list(channel_mult)[::-1]
        dims = [channels * mult[0]] + [channels * m for m in mult]
        self.conv1 = CausalConv3d(in_channels, dims[0], 3, padding=1)
        self.middle = _middle(dims[0], attention, dropout)
        stages = []
        for i in range(len(mult)):
            blocks = [
                ResidualBlock(dims[i] if j == 0 else dims[i + 1], dims[i + 1], dropout)
                for j in range(num_res_blocks + 1)
            ]
            if i < len(mult) - 1:
                blocks.append(Resample(dims[i + 1], "up"))
            stages.append(UpStage(blocks))
        self.upsamples = nn.ModuleList(stages)
        self.head = _head(dims[-1], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.middle(self.conv1(x))
        for stage in self.upsamples:
            x = stage(x)
        return self.head(x)


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` → ``[B, C·p·p, T, H/p, W/p]``; channel ``c·p² + r·p + q`` holds pixel
    ``(h·p + q, w·p + r)``.

    The order (W offset r before H offset q) is the official ``b c f (h q) (w r) -> b (c r q) f h w``.
    """
    if patch_size == 1:
        return x
    b, c, t, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, t, h // p, p, w // p, p)  # b c t h q w r
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, C·p·p, T, h, w]`` → ``[B, C, T, h·p, w·p]``."""
    if patch_size == 1:
        return x
    b, cpp, t, h, w = x.shape
    p = patch_size
    x = x.reshape(b, cpp // (p * p), p, p, t, h, w)  # b c r q t h w
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), t, h * p, w * p)


class HBQTokenizer(nn.Module):
    """Causal 3-D conv autoencoder with a tanh-bounded latent quantised by HBQ (``grn.hbq``).

    Tensor contract (one ``d = latent_dim``, ``M = hbq_rounds``, ``s = spatial_stride``):

    * pixels: float in [-1, 1], ``[B, 3, H, W]`` (image) or ``[B, 3, T, H, W]`` (video); H, W divisible by s.
    * features F: float in (-1, 1), ``[B, d, H/s, W/s]`` or ``[B, d, T, H/s, W/s]`` (same rank as the pixels).
    * labels: int64, ``[B, d, (T,) h, w]`` for ``target="index"``, ``[B, M·d, (T,) h, w]`` for ``"bits"``.

    Args:
        in_channels: pixel channels.
        latent_dim: d, channels of F.
        hbq_rounds: M, HBQ rounds used by :meth:`encode`, :meth:`decode_labels` and :meth:`forward`.
        patch_size: 1 (none) or 2 (the official 2×2 patchify).
        enc_channels / dec_channels: base widths; stage widths are these times ``channel_mult``.
        channel_mult: width multiplier per stage; every stage but the last halves H and W.
        num_res_blocks: residual blocks per encoder stage (the decoder has one more per stage).
        attention: put a per-frame self-attention block in the encoder and decoder middles.
        dropout: dropout inside the residual blocks.
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_dim: int = 4,
        hbq_rounds: int = 4,
        patch_size: int = 1,
        enc_channels: int = 32,
        dec_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if patch_size not in (1, 2):
            raise ValueError(f"patch_size must be 1 or 2, got {patch_size}")
        channel_mult = tuple(int(m) for m in channel_mult)
        if not channel_mult:
            raise ValueError("channel_mult needs at least one stage")
        hbq.num_classes(hbq_rounds)  # validates hbq_rounds early, with the hbq module's message
        self.in_channels = in_channels
        self._latent_dim = latent_dim
        self._hbq_rounds = hbq_rounds
        self.patch_size = patch_size
        self._spatial_stride = patch_size * 2 ** (len(channel_mult) - 1)
        pixel_channels = in_channels * patch_size**2
        self.encoder = Encoder3d(
            pixel_channels, latent_dim, enc_channels, channel_mult, num_res_blocks, attention, dropout
        )
        # 1×1×1 post-quantisation conv (official `conv2`); its bias cannot fold into the padded conv after it
        self.conv2 = CausalConv3d(latent_dim, latent_dim, 1)
        self.decoder = Decoder3d(
            latent_dim, pixel_channels, dec_channels, channel_mult, num_res_blocks, attention, dropout
        )

    @property
    def latent_dim(self) -> int:
        return self._latent_dim

    @property
    def hbq_rounds(self) -> int:
        return self._hbq_rounds

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent position along H and W: ``patch_size * 2 ** (len(channel_mult) - 1)``."""
        return self._spatial_stride

    @property
    def temporal_stride(self) -> int:
        """Frames per latent frame (1: no temporal down-sampling yet)."""
        return 1

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output conv (for the VQGAN-style adaptive GAN weight)."""
        return self.decoder.head[-1].weight

    @staticmethod
    def _as_video(x: torch.Tensor, what: str) -> tuple[torch.Tensor, bool]:
        if x.dim() == 4:
            return x.unsqueeze(2), True
        if x.dim() == 5:
            return x, False
        raise ValueError(f"{what} must be [B, C, H, W] or [B, C, T, H, W], got shape {tuple(x.shape)}")

    def encode_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, (T,) H, W]`` in [-1, 1] → F = tanh(Enc(x)) ``[B, d, (T,) H/s, W/s]`` in (-1, 1)."""
        video, was_image = self._as_video(x, "pixels")
        s = self.spatial_stride
        if video.shape[-2] % s or video.shape[-1] % s:
            raise ValueError(
                f"image size {tuple(video.shape[-2:])} is not divisible by the tokenizer's spatial stride {s}"
            )
        features = torch.tanh(self.encoder(patchify(video, self.patch_size)))
        return features.squeeze(2) if was_image else features

    def encode(self, x: torch.Tensor, target: hbq.Target = "index") -> torch.Tensor:
        """Pixels → int64 HBQ labels ``[B, d, (T,) h, w]`` (index) or ``[B, M·d, (T,) h, w]`` (bits)."""
        return hbq.quantize(self.encode_features(x), self.hbq_rounds, target)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Features ``[B, d, (T,) h, w]`` → pixels ``[B, 3, (T,) h·s, w·s]`` (same rank; not clamped)."""
        z, was_image = self._as_video(features, "features")
        pixels = unpatchify(self.decoder(self.conv2(z)), self.patch_size)
        return pixels.squeeze(2) if was_image else pixels

    def decode_labels(self, labels: torch.Tensor, target: hbq.Target = "index") -> torch.Tensor:
        """HBQ labels (see :meth:`encode`) → pixels ``[B, 3, (T,) H, W]``."""
        return self.decode(hbq.dequantize(labels, self.hbq_rounds, target, dtype=self.last_layer.dtype))

    def forward(
        self, x: torch.Tensor, quantize: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct ``x`` through the (straight-through) quantised latent.

        Returns:
            ``(x_rec, features, features_q)``: pixels shaped like ``x``; F ``[B, d, (T,) h, w]``; and what the
            decoder saw — ``hbq.quantize_ste(F, M)`` (value F̂, gradient identity) if ``quantize`` else F.
        """
        features = self.encode_features(x)
        features_q = hbq.quantize_ste(features, self.hbq_rounds) if quantize else features
        return self.decode(features_q), features, features_q
