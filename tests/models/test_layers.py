"""Building blocks: the complex-product RoPE equals the rotate-half definition, and rotations keep norms."""

import torch

from grn.models.layers import apply_rope, rope_2d_tables, rotate_half


def test_rope_matches_rotate_half_definition_on_strided_input():
    cos, sin = rope_2d_tables(4, 6, 16)
    # q as it comes out of a fused qkv projection: a permuted, non-contiguous view
    qkv = torch.randn(2, 24, 3, 4, 16, generator=torch.Generator().manual_seed(0))
    q = qkv.permute(2, 0, 3, 1, 4)[0]
    assert not q.is_contiguous()
    expected = q * cos + rotate_half(q) * sin
    out = apply_rope(q, cos, sin)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.norm(dim=-1), q.norm(dim=-1), atol=1e-5, rtol=1e-5)
    # position 0 has angle 0: no rotation; other positions do rotate
    torch.testing.assert_close(out[:, :, 0], q[:, :, 0])
    assert not torch.allclose(out[:, :, 1:], q[:, :, 1:])


def test_rope_keeps_half_precision_dtype():
    cos, sin = rope_2d_tables(2, 2, 8)
    x = torch.randn(1, 2, 4, 8).to(torch.bfloat16)
    out = apply_rope(x, cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), apply_rope(x.float(), cos, sin), atol=2e-2, rtol=2e-2)
