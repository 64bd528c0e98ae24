"""Attention of the T2I/T2V network (:mod:`grn.models.t2iv`): Qwen3-style self-attention with grouped-query
heads, and the kernels a layout's attention pattern (:mod:`grn.models.packing`) runs on: SDPA with a dense boolean
mask, flex attention with a BlockMask, or flash-attn's varlen kernel over the real tokens (``fsa`` on CUDA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grn.models.layers import RMSNorm, apply_rope, flash_varlen
from grn.models.packing import FSA, TEXT, TEXT_ONLY, Layout

T2IV_ATTN_BACKENDS = ("sdpa", "flex")


class VarlenAttention:
    """The ``fsa`` mask of a layout as varlen segments, for flash-attn on CUDA (no ``L × L`` tensor).

    ``segments``: cu_seqlens int32 ``[S + 1]``, max_seqlen, and the flat slots ``[N_real]`` of the real tokens,
    sample after sample (:meth:`Layout.varlen_segments`). Where flash-attn cannot run (fp32, CPU tensors) the
    blocks fall back to SDPA with the dense block-diagonal mask, built once on first use.
    """

    def __init__(self, layout: Layout):
        self.layout = layout
        self.cu_seqlens, self.max_seqlen, self.token_index = layout.varlen_segments()
        self._dense = None

    def dense(self) -> torch.Tensor:
        """bool ``[B, 1, L, L]`` (:meth:`Layout.attention_mask` with the ``fsa`` pattern)."""
        if self._dense is None:
            self._dense = self.layout.attention_mask(FSA)
        return self._dense


class SelfAttention(nn.Module):
    """Masked multi-head self-attention, Qwen3 style: q/k/v/o without bias, per-head RMSNorm on q and k, 3-D RoPE.

    ``num_kv_heads`` < ``num_heads`` is grouped-query attention (official ``repeat_kv``): query head h reads key /
    value head ``h // (num_heads / num_kv_heads)``; k_proj / v_proj are ``[num_kv_heads · head_dim, dim]``.
    """

    def __init__(self, dim: int, num_heads: int, backend: str = "sdpa", num_kv_heads: int | None = None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        if backend not in T2IV_ATTN_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {T2IV_ATTN_BACKENDS}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        kv_dim = num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask,
                extra_kv: tuple[torch.Tensor, torch.Tensor] | None = None, keep_kv: list | None = None) -> torch.Tensor:
        """x ``[B, L, D]``; cos/sin ``[B, 1, L, head_dim]``; mask: bool ``[B, 1, L, L + L_extra]`` (sdpa; None:
        attend to everything), a flex BlockMask or a :class:`VarlenAttention` -> ``[B, L, D]``.

        ``extra_kv``: cached keys / values ``[B, kv_heads, L_extra, head_dim]`` (already normed and rotated)
        appended after this sequence's own; ``keep_kv``: a list that receives this sequence's ``(k, v)``.
        """
        b, n, _ = x.shape
        kv_shape = (b, n, self.num_kv_heads, self.head_dim)
        q = apply_rope(self.q_norm(self.q_proj(x).view(b, n, self.num_heads, self.head_dim)).transpose(1, 2), cos, sin)
        k = apply_rope(self.k_norm(self.k_proj(x).view(kv_shape)).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(kv_shape).transpose(1, 2)
        if keep_kv is not None:
            keep_kv.append((k, v))
        if extra_kv is not None:
            k = torch.cat([k, extra_kv[0].to(k.dtype)], dim=2)
            v = torch.cat([v, extra_kv[1].to(v.dtype)], dim=2)
        gqa = self.num_kv_heads != self.num_heads
        if isinstance(mask, VarlenAttention):
            varlen = flash_varlen() if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) else None
            if varlen is not None:
                return self.o_proj(self._varlen(varlen, q, k, v, mask).view(b, n, -1))
            mask = mask.dense()  # fp32 or no flash-attn: the same pattern as a dense mask
        if self.backend == "flex" and extra_kv is None:
            from torch.nn.attention.flex_attention import flex_attention

            out = flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))

    @staticmethod
    def _varlen(varlen, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: VarlenAttention) -> torch.Tensor:
        """flash-attn varlen over the real tokens: q ``[B, H, L, hd]``, k/v ``[B, H_kv, L, hd]`` -> ``[B·L, H·hd]``
        (padding slots get zeros: no one reads them). flash-attn takes GQA as it is (fewer k/v heads)."""
        def tokens(t: torch.Tensor) -> torch.Tensor:  # [B, h, L, hd] -> [N_real, h, hd]
            return t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3]).index_select(0, seg.token_index)

        out = varlen(tokens(q), tokens(k), tokens(v), seg.cu_seqlens, seg.cu_seqlens, seg.max_seqlen, seg.max_seqlen)
        if isinstance(out, tuple):  # some flash-attn versions also return the log-sum-exp
            out = out[0]
        full = out.new_zeros(q.shape[0] * q.shape[2], out.shape[1], out.shape[2])
        return full.index_copy(0, seg.token_index, out).flatten(1)


def flex_block_mask(layout: Layout, pattern: str = TEXT_ONLY):
    """The layout's attention rule (``pattern``, see :meth:`Layout.attention_mask`) as a flex-attention BlockMask
    (GPU training: no ``L × L`` tensor)."""
    from torch.nn.attention.flex_attention import create_block_mask

    sid, is_text = layout.sample_id, layout.kind == TEXT
    fsa = pattern == FSA

    def mask_mod(b, h, q, k):
        same = (sid[b, q] == sid[b, k]) & (sid[b, k] >= 0)
        if not fsa:
            same = same & (~is_text[b, q] | is_text[b, k])
        return same | ((sid[b, q] < 0) & (q == k))

    bsz, length = layout.shape
    return create_block_mask(mask_mod, bsz, None, length, length, device=sid.device)
