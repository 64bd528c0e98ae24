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

The blocks live in :mod:`grn.models.tokenizer_blocks`, the encoder and decoder stages in
:mod:`grn.models.tokenizer_stages`; this module re-exports them, so ``from grn.models.tokenizer import …``
keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from grn import hbq
from grn.models.tokenizer_blocks import CausalConv3d, TemporalCache, patchify, unpatchify
from grn.models.tokenizer_blocks import AttentionBlock, Resample, ResidualBlock, RMSNorm  # re-exported only
from grn.models.tokenizer_stages import AvgDown3D, Decoder3d, DownStage, DupUp3D, Encoder3d, UpStage, _flags

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
