"""The tokenizer's encoder and decoder, stage by stage: the parameter-free shortcuts (:class:`AvgDown3D`,
:class:`DupUp3D`), one down/up stage each, and :class:`Encoder3d` / :class:`Decoder3d` (official key names;
see :mod:`grn.models.tokenizer` for the whole network).

Tensors are ``[B, C, T, H, W]`` unless a docstring says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from grn.models.tokenizer_blocks import (
    AttentionBlock,
    CausalConv3d,
    Resample,
    ResidualBlock,
    RMSNorm,
    TemporalCache,
    _stream_conv,
)

__all__ = ["AvgDown3D", "DupUp3D", "DownStage", "UpStage", "Encoder3d", "Decoder3d"]


def _resize_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Parameter-free width change on dim 1: average groups of consecutive channels, or repeat each one."""
    c = x.shape[1]
    if c == channels:
        return x
    if c > channels:
        return x.view(x.shape[0], channels, c // channels, *x.shape[2:]).mean(dim=2)
    return x.repeat_interleave(channels // c, dim=1)


def _check_ratio(a: int, b: int, what: str) -> None:
    if max(a, b) % min(a, b):
        raise ValueError(f"{what}: {a} and {b} channels are not multiples of each other; change the widths")


class AvgDown3D(nn.Module):
    """Parameter-free down-sampling shortcut: fold each ``f_t × f_s × f_s`` block into channels (channel
    ``c·f + (t·f_s + h)·f_s + w``), then average consecutive channel groups down to ``out_channels``.

    ``[B, C_in, T, H, W]`` → ``[B, C_out, ⌈T/f_t⌉, H/f_s, W/f_s]``. Time is zero-padded on the left to a
    multiple of ``f_t`` (so frame 0 pairs with a zero frame, as in the official code). Where the folded width
    is smaller than ``out_channels`` (possible only in small custom layouts) channels are repeated instead.
    """

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        _check_ratio(in_channels * factor_t * factor_s**2, out_channels, "AvgDown3D shortcut")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        if ft > 1 and x.shape[2] % ft:
            x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % ft, 0))
        if ft * fs > 1:
            b, c, t, h, w = x.shape
            x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
            x = x.reshape(b, c * ft * fs * fs, t // ft, h // fs, w // fs)
        return _resize_channels(x, self.out_channels)


class DupUp3D(nn.Module):
    """Parameter-free up-sampling shortcut, the inverse layout of :class:`AvgDown3D`: repeat each channel
    until there are ``out_channels · f`` of them, then unfold them into ``f_t × f_s × f_s`` blocks.

    ``[B, C_in, T, H, W]`` → ``[B, C_out, T·f_t, H·f_s, W·f_s]``, minus the first ``f_t - 1`` frames when
    ``first_chunk`` (latent frame 0 stands for one frame, not ``f_t``).
    """

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        _check_ratio(out_channels * factor_t * factor_s**2, in_channels, "DupUp3D shortcut")

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        ft, fs, co = self.factor_t, self.factor_s, self.out_channels
        b, _, t, h, w = x.shape
        x = _resize_channels(x, co * ft * fs * fs)
        x = x.view(b, co, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, co, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1 :] if first_chunk and ft > 1 else x


def _stage_blocks(in_dim: int, out_dim: int, num_blocks: int, dropout: float, resample: str | None,
                  temporal: bool) -> nn.ModuleList:
    """``num_blocks`` residual blocks ``in → out``, then a :class:`Resample` (``"down"`` / ``"up"``; None: none)."""
    blocks: list[nn.Module] = [ResidualBlock(in_dim if j == 0 else out_dim, out_dim, dropout) for j in range(num_blocks)]
    if resample is not None:
        blocks.append(Resample(out_dim, resample, temporal))
    return nn.ModuleList(blocks)


class DownStage(nn.Module):
    """One encoder stage (official ``Down_ResidualBlock``): ``num_blocks`` residual blocks ``in → out``,
    then (``spatial``) a :class:`Resample` down, temporal too when ``temporal``; plus an :class:`AvgDown3D`
    shortcut of the stage input. ``[B, C_in, T, H, W]`` → ``[B, C_out, T', H', W']``."""

    def __init__(
        self, in_dim: int, out_dim: int, num_blocks: int, dropout: float, spatial: bool, temporal: bool
    ):
        super().__init__()
        self.downsamples = _stage_blocks(in_dim, out_dim, num_blocks, dropout, "down" if spatial else None, temporal)
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if spatial else 1)

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        shortcut = self.avg_shortcut(x)
        for module in self.downsamples:
            x = module(x, cache)
        return x + shortcut


class UpStage(nn.Module):
    """One decoder stage (official ``Up_ResidualBlock``): ``num_blocks`` residual blocks ``in → out``, then
    (``spatial``) a :class:`Resample` up, temporal too when ``temporal``; a :class:`DupUp3D` shortcut only on
    those up-sampling stages. ``[B, C_in, T, H, W]`` → ``[B, C_out, T', H', W']``."""

    def __init__(
        self, in_dim: int, out_dim: int, num_blocks: int, dropout: float, spatial: bool, temporal: bool
    ):
        super().__init__()
        self.upsamples = _stage_blocks(in_dim, out_dim, num_blocks, dropout, "up" if spatial else None, temporal)
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if spatial else None

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        out = x
        for module in self.upsamples:
            out = module(out, cache)
        if self.avg_shortcut is None:
            return out
        return out + self.avg_shortcut(x, first_chunk=cache is None or cache.first)


def _middle(channels: int, attention: bool, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        ResidualBlock(channels, channels, dropout),
        AttentionBlock(channels) if attention else nn.Identity(),
        ResidualBlock(channels, channels, dropout),
    )


def _head(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(channels), nn.SiLU(), CausalConv3d(channels, out_channels, 3, padding=1))


def _run_middle(middle: nn.Sequential, x: torch.Tensor, cache: TemporalCache | None) -> torch.Tensor:
    for layer in middle:
        x = layer(x, cache) if isinstance(layer, ResidualBlock) else layer(x)
    return x


def _run_head(head: nn.Sequential, x: torch.Tensor, cache: TemporalCache | None) -> torch.Tensor:
    for layer in head:
        x = _stream_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
    return x


def _flags(flags: Sequence[bool | int] | None, n: int, what: str) -> list[bool]:
    flags = [bool(f) for f in (flags or [])]
    if len(flags) > n:
        raise ValueError(
            f"{what} has {len(flags)} entries but only {n} stages down-sample (one per stage but the last)"
        )
    return flags + [False] * (n - len(flags))


class _CausalStack(nn.Module):
    """The arguments :class:`Encoder3d` and :class:`Decoder3d` share: ``temporal`` holds one resampling flag per
    stage but the last (the encoder's ``temporal_downsample``; the decoder's ``temporal_upsample``, the
    reversed encoder flags); subclasses build their layers in :meth:`build` from the checked flags."""

    temporal_name = "temporal"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attention: bool,
        dropout: float,
        temporal: Sequence[bool | int] | None = None,
    ):
        super().__init__()
        flags = _flags(temporal, len(channel_mult) - 1, self.temporal_name) + [False]
        self.build(in_channels, out_channels, channels, list(channel_mult), num_res_blocks, attention, dropout,
                   flags)

    def build(self, in_channels: int, out_channels: int, channels: int, channel_mult: list[int],
              num_res_blocks: int, attention: bool, dropout: float, temporal: list[bool]) -> None:
        raise NotImplementedError


class Encoder3d(_CausalStack):
    """``[B, C_in, T, H, W]`` → ``[B, C_out, 1 + (T-1)/s_t, H/2^(S-1), W/2^(S-1)]`` (S stages).

    S = ``len(channel_mult)``.

    ``dims = [ch] + [ch·m for m in channel_mult]``; stage i maps ``dims[i] → dims[i+1]`` (see
    :class:`DownStage`); ``temporal_downsample[i]`` (the ``temporal`` argument) halves time in stage i
    (stages 0..S-2 only).
    """

    temporal_name = "temporal_downsample"

    def build(self, in_channels, out_channels, channels, channel_mult, num_res_blocks, attention, dropout, temporal):
        n = len(channel_mult)
        dims = [channels] + [channels * m for m in channel_mult]
        self.conv1 = CausalConv3d(in_channels, dims[0], 3, padding=1)
        self.downsamples = nn.ModuleList(
            DownStage(dims[i], dims[i + 1], num_res_blocks, dropout, i < n - 1, temporal[i]) for i in range(n)
        )
        self.middle = _middle(dims[-1], attention, dropout)
        self.head = _head(dims[-1], out_channels)

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        x = _stream_conv(self.conv1, x, cache)
        for stage in self.downsamples:
            x = stage(x, cache)
        return _run_head(self.head, _run_middle(self.middle, x, cache), cache)


class Decoder3d(_CausalStack):
    """``[B, C_in, T, h, w]`` → ``[B, C_out, 1 + (T-1)·s_t, h·2^(S-1), w·2^(S-1)]``; mirrors the encoder.

    Widths ``dims = [ch·m_last] + [ch·m for m in reversed(channel_mult)]``; stage i has ``num_res_blocks + 1``
    residual blocks, then (all but the last) up-samples (see :class:`UpStage`); ``temporal_upsample[i]`` (the
    ``temporal`` argument) doubles time in stage i (the reversed encoder flags).
    """

    temporal_name = "temporal_upsample"

    def build(self, in_channels, out_channels, channels, channel_mult, num_res_blocks, attention, dropout, temporal):
        n = len(channel_mult)
        mult = channel_mult[::-1]
        dims = [channels * mult[0]] + [channels * m for m in mult]
        self.conv1 = CausalConv3d(in_channels, dims[0], 3, padding=1)
        self.middle = _middle(dims[0], attention, dropout)
        self.upsamples = nn.ModuleList(
            UpStage(dims[i], dims[i + 1], num_res_blocks + 1, dropout, i < n - 1, temporal[i])
            for i in range(n)
        )
        self.head = _head(dims[-1], out_channels)

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        x = _run_middle(self.middle, _stream_conv(self.conv1, x, cache), cache)
        for stage in self.upsamples:
            x = stage(x, cache)
        return _run_head(self.head, x, cache)
