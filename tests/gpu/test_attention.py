"""flash-attn vs SDPA on a GPU: the same network with ``attn_backend=flash`` gives the SDPA logits under bf16
autocast, and really calls the flash-attn kernel (else the comparison would be SDPA against itself)."""

from __future__ import annotations

import pytest
import torch

from grn.models.generator import build_generator

from tiny_nets import input_dependent_init

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` over the whole tensor (errors relative to the logits' scale, not entry by entry)."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_flash_attn_matches_sdpa_logits():
    pytest.importorskip("flash_attn", reason="flash-attn is not installed (pip install 'grn[gpu]')")
    torch.manual_seed(0)
    # "small": 6 blocks, head_dim 64 (a flash-attn size), 16 x 16 tokens + 16 in-context class tokens
    kwargs = dict(latent_dim=16, hbq_rounds=4, num_classes=10, input_size=16)
    sdpa = input_dependent_init(build_generator("small", **kwargs)).cuda()
    flash = build_generator("small", attn_backend="flash", **kwargs).cuda().eval()
    flash.load_state_dict(sdpa.state_dict())
    calls = []
    for block in flash.blocks:
        kernel = block.attn.flash
        block.attn.flash = lambda *a, _k=kernel, **kw: calls.append(a[0].dtype) or _k(*a, **kw)
    g = torch.Generator(device="cuda").manual_seed(1)
    z = torch.randint(0, 16, (8, 16, 16, 16), device="cuda", generator=g)
    t = torch.rand(8, device="cuda", generator=g)
    y = torch.arange(8, device="cuda") % 11  # 10 = the unconditional class
    with torch.no_grad():
        reference = sdpa(z, t, y)  # fp32 throughout: the yardstick of both bf16 runs
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ours = sdpa(z, t, y)
            theirs = flash(z, t, y)
        assert calls == [torch.bfloat16] * len(flash.blocks)  # every block went through flash-attn
        calls.clear()
        fp32_flash = flash(z, t, y)  # fp32 inputs: flash-attn takes half precision only, so SDPA runs
    assert calls == []
    torch.testing.assert_close(fp32_flash, reference, rtol=1e-5, atol=1e-5)  # the same SDPA call on the same inputs
    assert ours.dtype == theirs.dtype == torch.float32  # the output layer runs in fp32 under autocast too
    # Both kernels take the same bf16 q, k, v, accumulate in fp32 and round their output to bf16 (unit roundoff
    # 2^-8); they differ in block order and rounding only, so flash-attn must be as close to the fp32 network as
    # SDPA is (within half as much again), and the two no further apart than two such errors added (with margin).
    # A wrong kernel (layout, scale, missing heads) would be off by the logits' own scale, a relative error ~1.
    bf16_error = relative_error(ours, reference)
    assert relative_error(theirs, reference) <= 1.5 * bf16_error + 1e-3, (relative_error(theirs, reference), bf16_error)
    assert relative_error(theirs, ours) <= 3 * bf16_error + 1e-3, (relative_error(theirs, ours), bf16_error)
    assert bf16_error < 0.1  # bf16 keeps the logits within a few roundings of 2^-8 (CPU autocast here: 1.6e-2)
