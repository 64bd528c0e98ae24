"""HBQ tokenizer: a causal 3-D conv autoencoder whose latent is squashed by tanh and quantised by HBQ.

The network is the official one (a Wan-2.2-style VAE, reference facts §2), built from constructor arguments
so that tiny variants exist. Pixels are ``[B, 3, T, H, W]`` videos; an image is a 1-frame video, and because
every temporal operation is causal, a video's first frame is encoded exactly like the image alone.

Layout (names are the official state-dict keys)::

    patchify p×p ─ encoder.conv1 ─ encoder.downsamples.{i} ─ encoder.middle (Res, Attn, Res) ─ encoder.head ─►
    2d channels ─ conv1 (1×1×1, only the mu half: weight[:d]) ─ tanh = F in (-1, 1)    ... HBQ ...
    F̂ ─ conv2 (1×1×1) ─ decoder.conv1 ─ decoder.middle ─ decoder.upsamples.{i} ─ decoder.head ─ unpatchify

* Encoder stage i maps ``dims[i] → dims[i+1]`` with ``dims = enc·[1, *channel_mult]`` through
  ``num_res_blocks`` residual blocks; every stage but the last then halves H, W (zero-pad right/bottom, 3×3
  stride-2 conv) and, where ``temporal_downsample[i]``, halves time with a stride-2 causal ``time_conv``. A
  parameter-free :class:`AvgDown3D` shortcut (fold the down-sampled block into channels, average channel
  groups) is added around every stage.
* Decoder widths ``dec·[m_last, *reversed(channel_mult)]``; stage i has ``num_res_blocks + 1`` residual
  blocks, then (all but the last) doubles H, W (nearest ×2, 3×3 conv) and, where the reversed temporal flag
  is set, doubles time: a causal ``time_conv`` (C → 2C) whose two halves become two interleaved frames. The
  parameter-free :class:`DupUp3D` shortcut sits on exactly those up-sampling stages.
* Strides: ``spatial_stride = patch_size · 2^(S-1)`` (S = ``len(channel_mult)``), ``temporal_stride =
  2^sum(temporal_downsample)``. The official network (patch 2, mult [1, 2, 4, 4], flags [0, 1, 1]) has 16
  and 4: ``1 + 4T`` frames ↔ ``1 + T`` latent frames.

First-frame rule (official chunked code, facts §2.3, written here as one whole-sequence pass): the temporal
down-sampler passes frame 0 through untouched and runs its unpadded stride-2 conv over frames ``0..T-1`` (so
``1 + 2k`` frames → ``1 + k``); the temporal up-sampler passes latent frame 0 through untouched and runs its
causal conv over frames ``1..`` only, starting from zero padding; :class:`DupUp3D` drops its first
``f_t - 1`` frames. A whole pass and a chunked pass (1 frame, then ``temporal_stride`` frames per latent,
carrying each causal conv's last input frames in a :class:`TemporalCache`) give the same numbers.

Departures from the official code, all with the same maths: the log-variance half of ``conv1`` is never
computed; nearest up-sampling runs in the input dtype (it is exact in any dtype); single frames take 2-D
convolutions, and on the CPU so do short clips (stacked temporal taps); attention gets channel-contiguous
q/k/v so SDPA can use its fused kernels; the encoder/decoder run whole sequences in one pass (chunks only
when asked); videos whose ``T - 1`` is not a multiple of the temporal stride raise instead of losing frames;
decoding can be tiled in space.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

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
    "AvgDown3D",
    "DupUp3D",
    "DownStage",
    "UpStage",
    "Encoder3d",
    "Decoder3d",
    "TemporalCache",
    "HBQTokenizer",
    "patchify",
    "unpatchify",
    "tile_starts",
    "blend_ramps",
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


class DownStage(nn.Module):
    """One encoder stage (official ``Down_ResidualBlock``): ``num_blocks`` residual blocks ``in → out``,
    then (``spatial``) a :class:`Resample` down, temporal too when ``temporal``; plus an :class:`AvgDown3D`
    shortcut of the stage input. ``[B, C_in, T, H, W]`` → ``[B, C_out, T', H', W']``."""

    def __init__(
        self, in_dim: int, out_dim: int, num_blocks: int, dropout: float, spatial: bool, temporal: bool
    ):
        super().__init__()
        blocks: list[nn.Module] = [
            ResidualBlock(in_dim if j == 0 else out_dim, out_dim, dropout) for j in range(num_blocks)
        ]
        if spatial:
            blocks.append(Resample(out_dim, "down", temporal))
        self.downsamples = nn.ModuleList(blocks)
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
        blocks: list[nn.Module] = [
            ResidualBlock(in_dim if j == 0 else out_dim, out_dim, dropout) for j in range(num_blocks)
        ]
        if spatial:
            blocks.append(Resample(out_dim, "up", temporal))
        self.upsamples = nn.ModuleList(blocks)
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


class Encoder3d(nn.Module):
    """``[B, C_in, T, H, W]`` → ``[B, C_out, 1 + (T-1)/s_t, H/2^(S-1), W/2^(S-1)]`` (S stages).

    S = ``len(channel_mult)``.

    ``dims = [ch] + [ch·m for m in channel_mult]``; stage i maps ``dims[i] → dims[i+1]`` (see
    :class:`DownStage`); ``temporal_downsample[i]`` halves time in stage i (stages 0..S-2 only).
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
        temporal_downsample: Sequence[bool | int] | None = None,
    ):
        super().__init__()
        n = len(channel_mult)
        temporal = _flags(temporal_downsample, n - 1, "temporal_downsample") + [False]
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


class Decoder3d(nn.Module):
    """``[B, C_in, T, h, w]`` → ``[B, C_out, 1 + (T-1)·s_t, h·2^(S-1), w·2^(S-1)]``; mirrors the encoder.

    Widths ``dims = [ch·m_last] + [ch·m for m in reversed(channel_mult)]``; stage i has ``num_res_blocks + 1``
    residual blocks, then (all but the last) up-samples (see :class:`UpStage`); ``temporal_upsample[i]``
    doubles time in stage i (the reversed encoder flags).
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
        temporal_upsample: Sequence[bool | int] | None = None,
    ):
        super().__init__()
        n = len(channel_mult)
        temporal = _flags(temporal_upsample, n - 1, "temporal_upsample") + [False]
        mult = list(channel_mult)[::-1]
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


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``min(tile, size)`` covering ``[0, size)``, neighbours overlapping by
    at least ``overlap`` (the last tile is flush with the end, so its overlap can be larger)."""
    if tile >= size:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def blend_ramps(starts: Sequence[int], tile: int, scale: int = 1) -> list[torch.Tensor]:
    """Per-tile 1-D blending weights (length ``tile·scale``) for tiles at ``starts`` (in units of ``scale``).

    Across each overlap with a neighbour the weight falls linearly from 1 to 0 while the neighbour's rises;
    elsewhere a tile's weight is 1. The ramps are then divided by their sum at every position, so they always
    sum to exactly 1 (already true where only two tiles overlap; this covers three-way overlaps).
    """
    n = tile * scale
    total = torch.zeros((starts[-1] + tile) * scale, dtype=torch.float64)
    ramps = []
    for i, s in enumerate(starts):
        w = torch.ones(n, dtype=torch.float64)
        if i > 0:  # rising edge over the overlap with the previous tile
            ov = (starts[i - 1] + tile - s) * scale
            w[:ov] *= (torch.arange(ov, dtype=torch.float64) + 0.5) / ov
        if i + 1 < len(starts):  # falling edge over the overlap with the next tile
            ov = (s + tile - starts[i + 1]) * scale
            w[n - ov :] *= 1 - (torch.arange(ov, dtype=torch.float64) + 0.5) / ov
        total[s * scale : s * scale + n] += w
        ramps.append(w)
    return [w / total[s * scale : s * scale + n] for s, w in zip(starts, ramps, strict=True)]


class HBQTokenizer(nn.Module):
    """Causal 3-D conv autoencoder with a tanh-bounded latent quantised by HBQ (``grn.hbq``).

    Tensor contract (``d = latent_dim``, ``M = hbq_rounds``, ``s = spatial_stride``, ``s_t =
    temporal_stride``):

    * pixels: float in [-1, 1], ``[B, 3, H, W]`` (image) or ``[B, 3, T, H, W]`` (video, ``T = 1 + s_t·k``);
      H, W divisible by s.
    * features F: float in (-1, 1), ``[B, d, H/s, W/s]`` or ``[B, d, 1 + k, H/s, W/s]`` (same rank as the
      pixels).
    * labels: int64, ``[B, d, (T,) h, w]`` for ``target="index"``, ``[B, M·d, (T,) h, w]`` for ``"bits"``.

    Args:
        in_channels: pixel channels.
        latent_dim: d, channels of F (the encoder head emits 2d, of which ``conv1`` keeps the mu half).
        hbq_rounds: M, HBQ rounds used by :meth:`encode`, :meth:`decode_labels` and :meth:`forward`.
        patch_size: 1 (none) or 2 (the official 2×2 patchify).
        enc_channels / dec_channels: base widths (official 160 / 256).
        channel_mult: width multiplier per stage (official [1, 2, 4, 4]); all stages but the last halve H, W.
        num_res_blocks: residual blocks per encoder stage (the decoder has one more per stage).
        attention: put a per-frame self-attention block in the encoder and decoder middles.
        dropout: dropout inside the residual blocks.
        temporal_downsample: per stage 0..S-2, whether it also halves time (official [0, 1, 1]); the decoder
            up-samples time on the mirrored stages. None: no temporal down-sampling.
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
        temporal_downsample: Sequence[bool | int] | None = None,
    ):
        super().__init__()
        if patch_size not in (1, 2):
            raise ValueError(f"patch_size must be 1 or 2, got {patch_size}")
        channel_mult = tuple(int(m) for m in channel_mult)
        if not channel_mult:
            raise ValueError("channel_mult needs at least one stage")
        hbq.num_levels(hbq_rounds)  # validates hbq_rounds early, with the hbq module's message
        t_down = _flags(temporal_downsample, len(channel_mult) - 1, "temporal_downsample")
        self.in_channels = in_channels
        self._latent_dim = latent_dim
        self._hbq_rounds = hbq_rounds
        self.patch_size = patch_size
        self.temporal_downsample = tuple(t_down)
        self._spatial_stride = patch_size * 2 ** (len(channel_mult) - 1)
        self._temporal_stride = 2 ** sum(t_down)
        pixel_channels = in_channels * patch_size**2
        self.encoder = Encoder3d(
            pixel_channels,
            2 * latent_dim,
            enc_channels,
            channel_mult,
            num_res_blocks,
            attention,
            dropout,
            t_down,
        )
        # official quant conv: 2d → (mu, log_var); only the mu rows are ever used (see _to_features)
        self.conv1 = CausalConv3d(2 * latent_dim, 2 * latent_dim, 1)
        self.conv2 = CausalConv3d(latent_dim, latent_dim, 1)
        self.decoder = Decoder3d(
            latent_dim,
            pixel_channels,
            dec_channels,
            channel_mult,
            num_res_blocks,
            attention,
            dropout,
            t_down[::-1],
        )

    # ------------------------------------------------------------------------------------------- properties
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
        """Frames per latent frame after the first: ``2 ** sum(temporal_downsample)`` (official: 4)."""
        return self._temporal_stride

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output conv (for the VQGAN-style adaptive GAN weight)."""
        return self.decoder.head[-1].weight

    # -------------------------------------------------------------------------------------------- helpers
    @staticmethod
    def _as_video(x: torch.Tensor, what: str) -> tuple[torch.Tensor, bool]:
        if x.dim() == 4:
            return x.unsqueeze(2), True
        if x.dim() == 5:
            return x, False
        raise ValueError(f"{what} must be [B, C, H, W] or [B, C, T, H, W], got shape {tuple(x.shape)}")

    def _check_pixels(self, video: torch.Tensor) -> None:
        s, st = self.spatial_stride, self.temporal_stride
        if video.shape[-2] % s or video.shape[-1] % s:
            raise ValueError(
                f"image size {tuple(video.shape[-2:])} is not divisible by the tokenizer's spatial stride {s}"
            )
        t = video.shape[2]
        if (t - 1) % st:
            raise ValueError(
                f"a video for this tokenizer needs 1 + {st}·k frames (temporal stride {st}), got {t}: "
                f"trim it to {1 + (t - 1) // st * st} or pad it to {1 + -(-(t - 1) // st) * st} frames"
            )

    @staticmethod
    def _chunks(length: int, step: int) -> Iterator[tuple[int, int]]:
        """``[0, 1)`` then ``[1, 1 + step)``, ``[1 + step, 1 + 2·step)``, … clipped to ``length``."""
        yield 0, 1
        for a in range(1, length, step):
            yield a, min(a + step, length)

    def _to_features(self, h: torch.Tensor) -> torch.Tensor:
        """Encoder output ``[B, 2d, T, h, w]`` → F = tanh(mu) ``[B, d, T, h, w]`` (log_var never computed)."""
        d = self.latent_dim
        return torch.tanh(F.conv3d(h, self.conv1.weight[:d], self.conv1.bias[:d]))

    @staticmethod
    def _check_chunk(temporal_chunk: int | None) -> None:
        if temporal_chunk is not None and (not isinstance(temporal_chunk, int) or temporal_chunk < 1):
            raise ValueError(
                f"temporal_chunk must be a positive int (latent frames per chunk), got {temporal_chunk!r}"
            )

    # ------------------------------------------------------------------------------------------------ encode
    def encode_features(self, x: torch.Tensor, temporal_chunk: int | None = None) -> torch.Tensor:
        """Pixels ``[B, 3, (T,) H, W]`` in [-1, 1] → F ``[B, d, (1 + (T-1)/s_t,) H/s, W/s]`` in (-1, 1).

        ``temporal_chunk``: None encodes the whole clip in one pass (training); an int n encodes frame 0, then
        ``n·s_t`` frames at a time, carrying the causal convs' last frames — the official chunking for n = 1 —
        with the same result and activation memory bounded by the chunk.
        """
        video, was_image = self._as_video(x, "pixels")
        self._check_pixels(video)
        self._check_chunk(temporal_chunk)
        z = patchify(video, self.patch_size)
        if temporal_chunk is None or z.shape[2] == 1:
            features = self._to_features(self.encoder(z))
        else:
            cache, parts = TemporalCache(), []
            for a, b in self._chunks(z.shape[2], temporal_chunk * self.temporal_stride):
                parts.append(self._to_features(self.encoder(z[:, :, a:b], cache)))
                cache.first = False
            features = torch.cat(parts, dim=2)
        return features.squeeze(2) if was_image else features

    def encode(
        self, x: torch.Tensor, target: hbq.Target = "index", temporal_chunk: int | None = None
    ) -> torch.Tensor:
        """Pixels → int64 HBQ labels ``[B, d, (T,) h, w]`` (index) or ``[B, M·d, (T,) h, w]`` (bits)."""
        return hbq.quantize(self.encode_features(x, temporal_chunk), self.hbq_rounds, target)

    # ------------------------------------------------------------------------------------------------ decode
    def _decode_video(self, z: torch.Tensor, temporal_chunk: int | None) -> torch.Tensor:
        """Features ``[B, d, T, h, w]`` → pixels ``[B, 3, 1 + (T-1)·s_t, h·s, w·s]``, whole or in chunks."""
        z = self.conv2(z)
        if temporal_chunk is None or z.shape[2] == 1:
            return unpatchify(self.decoder(z), self.patch_size)
        cache, parts = TemporalCache(), []
        for a, b in self._chunks(z.shape[2], temporal_chunk):
            parts.append(unpatchify(self.decoder(z[:, :, a:b], cache), self.patch_size))
            cache.first = False
        return torch.cat(parts, dim=2)

    def decode(
        self,
        features: torch.Tensor,
        temporal_chunk: int | None = None,
        tile_latent: int | None = None,
        tile_overlap: int | None = None,
    ) -> torch.Tensor:
        """Features ``[B, d, (T,) h, w]`` → pixels ``[B, 3, (1 + (T-1)·s_t,) h·s, w·s]``; not clamped.

        Args:
            temporal_chunk: None decodes all latent frames in one pass; n decodes latent frame 0, then n
                latent frames at a time (official: 1), the same result with memory bounded by the chunk.
            tile_latent: decode in square spatial tiles of this many latent positions (None: untiled). Tiles
                overlap by ``tile_overlap`` latents (default ``tile_latent // 4``) and are blended with linear
                ramps (:func:`blend_ramps`), so activation memory is that of one tile plus the output. Tiles
                see less context (convolutions near their edges, and the per-frame attention), so the result
                differs slightly from untiled decoding; see ``docs/tokenizer.md`` for measured numbers.
        """
        z, was_image = self._as_video(features, "features")
        self._check_chunk(temporal_chunk)
        h, w = z.shape[-2:]
        if tile_latent is None or (tile_latent >= h and tile_latent >= w):
            pixels = self._decode_video(z, temporal_chunk)
        else:
            overlap = tile_latent // 4 if tile_overlap is None else tile_overlap
            pixels = self._decode_tiled(z, temporal_chunk, tile_latent, overlap)
        return pixels.squeeze(2) if was_image else pixels

    def _decode_tiled(
        self, z: torch.Tensor, temporal_chunk: int | None, tile: int, overlap: int
    ) -> torch.Tensor:
        s = self.spatial_stride
        h, w = z.shape[-2:]
        th, tw = min(tile, h), min(tile, w)
        ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
        ry, rx = blend_ramps(ys, th, s), blend_ramps(xs, tw, s)
        out = None
        for y0, wy in zip(ys, ry, strict=True):
            for x0, wx in zip(xs, rx, strict=True):
                part = self._decode_video(z[..., y0 : y0 + th, x0 : x0 + tw], temporal_chunk)
                if out is None:
                    out = part.new_zeros(*part.shape[:3], h * s, w * s)
                weight = (wy[:, None] * wx[None, :]).to(part.device, part.dtype)
                out[..., y0 * s : (y0 + th) * s, x0 * s : (x0 + tw) * s].addcmul_(part, weight)
                del part
        return out

    def decode_labels(
        self, labels: torch.Tensor, target: hbq.Target = "index", **decode_kwargs
    ) -> torch.Tensor:
        """HBQ labels (see :meth:`encode`) → pixels ``[B, 3, (T,) H, W]``; keywords go to :meth:`decode`."""
        features = hbq.dequantize(labels, self.hbq_rounds, target, dtype=self.last_layer.dtype)
        return self.decode(features, **decode_kwargs)

    def forward(
        self, x: torch.Tensor, quantize: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct ``x`` through the (straight-through) quantised latent, in one pass.

        Returns:
            ``(x_rec, features, features_q)``: pixels shaped like ``x``; F ``[B, d, (T',) h, w]``; and what
            the decoder saw — ``hbq.quantize_ste(F, M)`` (value F̂, gradient identity) if ``quantize`` else F.
        """
        features = self.encode_features(x)
        features_q = hbq.quantize_ste(features, self.hbq_rounds) if quantize else features
        return self.decode(features_q), features, features_q
