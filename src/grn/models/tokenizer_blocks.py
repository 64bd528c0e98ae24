"""The tokenizer's building blocks: causal 3-D convolution, RMSNorm, residual and attention blocks, the
spatial/temporal resampler, the chunk cache and the 2×2 patchify (official key names; see
:mod:`grn.models.tokenizer` for the whole network and its first-frame rule).

Tensors are ``[B, C, T, H, W]`` unless a docstring says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TemporalCache",
    "CausalConv3d",
    "RMSNorm",
    "ResidualBlock",
    "AttentionBlock",
    "Resample",
    "patchify",
    "unpatchify",
]


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class TemporalCache:
    """State carried from one temporal chunk to the next in a chunked encode or decode.

    ``first`` is True while the first chunk (the one holding frame 0) runs; ``frames`` maps a module (by id)
    to the last input frames it needs from the previous chunk. One cache serves one pass over one video.
    """

    def __init__(self) -> None:
        self.first = True
        self.frames: dict[int, torch.Tensor] = {}


class CausalConv3d(nn.Conv3d):
    """3-D convolution that only looks at the present and the past in time.

    Time is padded by ``2 * padding_t`` frames on the left and none on the right; H and W are padded
    symmetrically. ``x`` is ``[B, C, T, H, W]`` → ``[B, C_out, T', H', W']`` (T' = T for stride 1).

    ``cache_x`` (``[B, C, t, H, W]``, the last input frames of the previous chunk) replaces that many frames
    of the left padding, so a video can be processed in chunks with the same result as in one go.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, **kwargs)
        pt, ph, pw = _triple(padding)
        self.time_pad = 2 * pt
        self._pad = (pw, pw, ph, ph, 2 * pt, 0)  # F.pad order: W, H, T (left, right)
        # A lone frame meets only the last temporal tap (the others see zero padding).
        self._single_frame_2d = self.stride[0] == 1 and self.time_pad == self.dilation[0] * (
            self.kernel_size[0] - 1
        )
        self._plain_time = self.stride[0] == 1 and self.dilation[0] == 1 and self.groups == 1

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        if cache_x is None and x.shape[2] == 1 and self._single_frame_2d:
            # same numbers as the padded 3-D conv at 1/k_t of the cost: the common case of image work
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
        if cache_x is not None and self.time_pad > 0:
            x = torch.cat([cache_x.to(x.dtype), x], dim=2)
            pad[4] = max(0, pad[4] - cache_x.shape[2])
        x = F.pad(x, pad) if any(pad) else x
        kt = self.kernel_size[0]
        if x.device.type == "cpu" and kt > 1 and self._plain_time and x.shape[2] - kt < 4:
            return self._stacked_taps(x)
        return super().forward(x)

    def _stacked_taps(self, x: torch.Tensor) -> torch.Tensor:
        """The conv as one 2-D conv per output frame over its k_t input frames stacked as channels.

        Chunked passes run this with 1-4 output frames, where CPU 3-D convolution is ~5× slower than the same
        FLOPs as a 2-D convolution. ``x`` is already padded: ``[B, C, T_out + k_t - 1, H, W]``.
        """
        b, c, t_in, h, w = x.shape
        kt = self.kernel_size[0]
        t_out = t_in - kt + 1
        frames = torch.stack([x[:, :, k : k + t_out] for k in range(kt)], dim=1)  # [B, k_t, C, T_out, H, W]
        frames = frames.permute(0, 3, 1, 2, 4, 5).reshape(b * t_out, kt * c, h, w)
        weight = self.weight.transpose(1, 2).reshape(
            self.out_channels, kt * c // self.groups, *self.kernel_size[1:]
        )
        out = F.conv2d(frames, weight, self.bias, self.stride[1:], 0, self.dilation[1:], self.groups)
        return out.view(b, t_out, *out.shape[1:]).transpose(1, 2)


def _stream_conv(conv: CausalConv3d, x: torch.Tensor, cache: TemporalCache | None) -> torch.Tensor:
    """``conv(x)``, continuing the previous chunk when ``cache`` is given (and keeping this one's tail)."""
    if cache is None or conv.time_pad == 0:
        return conv(x)
    key = id(conv)
    past = cache.frames.get(key)
    out = conv(x, cache_x=past)
    n = conv.time_pad
    if past is not None and x.shape[2] < n:
        x = torch.cat([past, x], dim=2)
    # clone: a view would keep the whole chunk's activation alive until the next chunk
    cache.frames[key] = x[:, :, -n:].clone()
    return out


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

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = _stream_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention inside each frame (over its H·W positions), with a residual connection.

    ``[B, C, T, H, W]`` → same shape. Frames never attend to each other, so causality in time is kept. The
    output projection starts at zero, so the block starts as the identity (plus the projection bias).
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
        # -> three [B*T, 1, H*W, C] tensors (one head). contiguous() puts channels last with stride 1:
        # without it SDPA falls back to the math kernel and materialises the (H·W)² scores (2.5 GB for 17
        # frames of 64×64).
        q, k, v = qkv.flatten(2).transpose(1, 2).contiguous().unsqueeze(1).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        out = self.proj(out)
        return x + out.reshape(b, t, c, h, w).transpose(1, 2)


def _per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame: ``[B, C, T, H, W]`` → ``[B, C', T, H', W']``."""
    b, c, t, h, w = x.shape
    y = module(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, y.shape[1], y.shape[2], y.shape[3]).transpose(1, 2)


class Resample(nn.Module):
    """Spatial ×2 down- or up-sampling of every frame, optionally with temporal ×2 (official ``*3d`` modes).

    * ``"down"``: ``resample`` = zero-pad right/bottom by one + 3×3 stride-2 conv; with ``temporal``, then
      ``time_conv`` (k=(3,1,1), stride (2,1,1), no padding) on frames ``0..`` with frame 0 passed through:
      ``[B, C, 1+2k, H, W]`` → ``[B, C, 1+k, H/2, W/2]``.
    * ``"up"``: with ``temporal``, first ``time_conv`` (C → 2C, causal k=(3,1,1)) on frames ``1..`` (frame 0
      passes through) whose halves become interleaved frame pairs, ``1+k`` → ``1+2k`` frames; then
      ``resample`` = nearest ×2 + 3×3 conv on every frame: ``H, W`` → ``2H, 2W``.

    ``cache`` continues a chunked pass (:class:`TemporalCache`); ``None`` means a whole sequence from frame 0.
    """

    def __init__(self, channels: int, mode: str, temporal: bool = False):
        super().__init__()
        if mode == "down":
            self.resample = nn.Sequential(
                nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(channels, channels, 3, stride=2)
            )
            if temporal:
                self.time_conv = CausalConv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1))
        elif mode == "up":
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                nn.Conv2d(channels, channels, 3, padding=1),
            )
            if temporal:
                self.time_conv = CausalConv3d(channels, 2 * channels, (3, 1, 1), padding=(1, 0, 0))
        else:
            raise ValueError(f"Resample mode must be 'down' or 'up', got {mode!r}")
        self.mode = mode
        self.temporal = temporal

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        first = cache is None or cache.first
        if self.mode == "up":
            if self.temporal:
                x = self._time_up(x, cache, first)
            return _per_frame(self.resample, x)
        x = _per_frame(self.resample, x)
        return self._time_down(x, cache, first) if self.temporal else x

    def _time_down(self, y: torch.Tensor, cache: TemporalCache | None, first: bool) -> torch.Tensor:
        key = id(self)
        if first:
            out = y if y.shape[2] == 1 else torch.cat([y[:, :, :1], self.time_conv(y)], dim=2)
        else:
            out = self.time_conv(torch.cat([cache.frames[key], y], dim=2))
        if cache is not None:
            cache.frames[key] = y[:, :, -1:].clone()
        return out

    def _time_up(self, x: torch.Tensor, cache: TemporalCache | None, first: bool) -> torch.Tensor:
        head, tail = (x[:, :, :1], x[:, :, 1:]) if first else (None, x)
        if tail.shape[2] == 0:
            return head
        y = _stream_conv(self.time_conv, tail, cache)  # [B, 2C, t, H, W]
        b, c2, t, h, w = y.shape
        # channel half j of frame i becomes output frame 2i + j
        y = y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
        return y if head is None else torch.cat([head, y], dim=2)



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
