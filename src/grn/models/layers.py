"""Transformer building blocks shared by the GRN networks: RMSNorm, SwiGLU, 2-D RoPE, attention, embedders."""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn


@cache
def flash_varlen():
    """flash-attn's ``flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)`` if
    the package is installed and CUDA is present, else None. Imported here, on first use, so that nothing needs
    flash-attn on a CPU (the callers fall back to SDPA)."""
    if not torch.cuda.is_available():
        return None
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # noqa: BLE001 - not installed, or built for another torch/CUDA: use SDPA instead
        return None
    return flash_attn_varlen_func


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in float32 (bf16 mean-of-squares loses too much precision)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


class SwiGLU(nn.Module):
    """``w3(silu(a) * b)`` with ``[a, b] = w12(x)``; hidden width int(2/3 · mlp_ratio · D) as in JiT/GRN."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


def rope_2d_tables(height: int, width: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial 2-D RoPE tables (the JiT ``VisionRotaryEmbeddingFast`` layout).

    The head dim is split into ``[h-axis half | w-axis half]``; each half rotates adjacent pairs with frequencies
    1/theta^(2k/(head_dim/2)), k < head_dim/4, each repeated twice.

    Returns:
        cos, sin: ``[height * width, head_dim]`` for tokens in (h, w) row-major order.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float64)[: half // 2] / half)
    freqs = freqs.repeat_interleave(2)  # [half]
    ang_h = torch.arange(height, dtype=torch.float64)[:, None] * freqs  # [H, half]
    ang_w = torch.arange(width, dtype=torch.float64)[:, None] * freqs  # [W, half]
    ang = torch.cat(
        [ang_h[:, None, :].expand(height, width, half), ang_w[None, :, :].expand(height, width, half)], dim=-1
    ).reshape(height * width, head_dim)
    return ang.cos().float(), ang.sin().float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Adjacent pairs (x0, x1) -> (-x1, x0)."""
    x = x.unflatten(-1, (-1, 2))
    x0, x1 = x.unbind(-1)
    return torch.stack((-x1, x0), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x ``[B, heads, L, head_dim]``; cos/sin ``[L, head_dim]`` (each angle repeated for its pair). Rotation in
    float32: ``x * cos + rotate_half(x) * sin``, computed as one complex product per adjacent pair (the same
    numbers, about 5x cheaper on CPU than the stack-and-add form)."""
    dtype = x.dtype
    pairs = x.float().unflatten(-1, (-1, 2))
    if torch.compiler.is_compiling():  # inductor has no complex kernels: the real form fuses into one kernel
        x0, x1 = pairs.unbind(-1)
        c, s = cos[..., 0::2].float(), sin[..., 0::2].float()
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2).to(dtype)
    if pairs.stride(-1) != 1 or any(st % 2 for st in pairs.stride()[:-1]):
        pairs = pairs.contiguous()
    turn = torch.complex(cos[..., 0::2].float(), sin[..., 0::2].float())
    return torch.view_as_real(torch.view_as_complex(pairs) * turn).flatten(-2).to(dtype)


ATTN_BACKENDS = ("sdpa", "flash")


def flash_attn_func_or_error():
    """The flash-attn kernel, or a one-line ImportError saying how to get it."""
    try:
        from flash_attn import flash_attn_func
    except ImportError as err:
        raise ImportError(
            "attn_backend=flash needs the flash-attn package on a CUDA machine: pip install 'grn[gpu]' "
            "(or use attn_backend=sdpa, which picks a flash kernel by itself where PyTorch has one)"
        ) from err
    return flash_attn_func


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv, per-head RMS qk-norm, RoPE and ``F.scaled_dot_product_attention``.

    ``backend="flash"`` calls the flash-attn package's kernel for CUDA half-precision inputs (and SDPA otherwise).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_norm: bool = True,
        dropout: float = 0.0,
        backend: str = "sdpa",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if backend not in ATTN_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {ATTN_BACKENDS}")
        self.flash = flash_attn_func_or_error() if backend == "flash" else None
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, D]``; cos/sin ``[L, head_dim]`` -> ``[B, L, D]``."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        p = self.dropout if self.training else 0.0
        # q's dtype, not x's: under autocast the residual stream (x) stays fp32 while the qkv projection, and so
        # q, k and v, are bf16; flash-attn takes half-precision inputs only
        if self.flash is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            # flash-attn takes [B, L, heads, head_dim]
            out = self.flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=p)
            return self.proj(out.reshape(b, n, -1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation; x ``[B, L, D]``, shift/scale ``[B, D]``."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))  # one fused pass, no temporary


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos | sin]`` of a raw scalar t per sample: ``[B]`` -> ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Raw keep-probability t in [0, 1] -> ``[B, D]`` through sin-cos features and a 2-layer SiLU MLP."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_frequencies(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def sincos_pos_embed_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE layout: first half from the w axis, second from h) ``[H*W, dim]``."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")

    def one_axis(pos: torch.Tensor, d: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None].double() * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    gh, gw = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.cat([one_axis(gw, dim // 2), one_axis(gh, dim // 2)], dim=1).float()
