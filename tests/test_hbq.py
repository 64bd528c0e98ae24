"""HBQ (paper Eq. 1-3, Alg. 1; facts §1): properties over M = 1..8 with hypothesis, plus the exact layouts."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grn import hbq

rounds = st.integers(min_value=1, max_value=8)
# floats strictly inside (-1, 1), including tiny magnitudes and exact dyadic thresholds
values = st.one_of(
    st.floats(min_value=-1.0, max_value=1.0, exclude_min=True, exclude_max=True, width=32, allow_subnormal=False),
    st.integers(min_value=-255, max_value=255).map(lambda k: k / 256.0),
)
feature_lists = st.lists(values, min_size=1, max_size=64)


def reference_loop(f: float, m: int) -> tuple[int, list[int], float]:
    """The official encode loop written out scalar by scalar."""
    c, label, bits = 0.0, 0, []
    for r in range(1, m + 1):
        b = 1 if f > c else 0
        bits.append(b)
        label = 2 * label + b
        c += 2.0**-r if b else -(2.0**-r)
    return label, bits, c


@settings(max_examples=200, deadline=None)
@given(m=rounds, xs=feature_lists)
def test_error_bound_and_reference(m, xs):
    f = torch.tensor(xs, dtype=torch.float32).view(1, -1, 1, 1)
    idx = hbq.quantize(f, m, "index")
    fhat = hbq.dequantize(idx, m, "index")
    assert (f - fhat).abs().max() <= 2.0**-m
    for i, x in enumerate(f.flatten().tolist()):
        label, _, centre = reference_loop(x, m)
        assert idx.flatten()[i].item() == label
        assert fhat.flatten()[i].item() == pytest.approx(centre, abs=0)


@settings(max_examples=150, deadline=None)
@given(m=rounds, xs=feature_lists)
def test_round_trips_and_idempotence(m, xs):
    f = torch.tensor(xs, dtype=torch.float32).view(1, 1, 1, -1)
    idx = hbq.quantize(f, m, "index")
    bits = hbq.quantize(f, m, "bits")
    assert torch.equal(hbq.index_labels_to_bit_labels(idx, m), bits)
    assert torch.equal(hbq.bit_labels_to_index_labels(bits, m), idx)
    assert torch.equal(hbq.dequantize(idx, m, "index"), hbq.dequantize(bits, m, "bits"))
    fhat = hbq.dequantize(idx, m, "index")
    assert torch.equal(hbq.quantize(fhat, m, "index"), idx)  # re-quantising F_hat is idempotent
    assert torch.equal(hbq.dequantize(hbq.quantize(fhat, m, "index"), m, "index"), fhat)


def test_strict_threshold_goes_low():
    # exactly on the first threshold (0): bit 0 -> lower bucket; index 2^(M-1)-1 for M=4 is 7 (0b0111)
    f = torch.zeros(1, 1, 1, 1)
    assert hbq.quantize(f, 4, "index").item() == 7
    assert hbq.dequantize(torch.tensor([7]), 4, "index").item() == -1 / 16
    tiny = torch.full((1, 1, 1, 1), 1e-30)  # above 0 by a hair: first bit must be 1 (a closed form gets this wrong)
    assert hbq.quantize(tiny, 4, "index").item() == 8


def test_index_msb_is_round_one_and_levels():
    f = torch.linspace(-0.999, 0.999, 1001).view(1, 1, 1, -1)
    idx = hbq.quantize(f, 4, "index")
    bits = hbq.quantize_bits(f, 4)
    assert torch.equal((idx >> 3) & 1, bits[:, 0].long())
    levels = hbq.dequantize(torch.arange(16), 4, "index")
    assert torch.allclose(levels, (2 * torch.arange(16) + 1 - 16) / 16)


def test_bit_layout_round_major():
    d, m = 3, 4
    f = torch.rand(2, d, 5, 5) * 2 - 1
    bits = hbq.quantize(f, m, "bits")
    assert bits.shape == (2, m * d, 5, 5)
    per_round = hbq.quantize_bits(f, m)
    for r in range(m):
        for c in range(d):
            assert torch.equal(bits[:, r * d + c], per_round[:, r, c].long())


def test_video_shape_and_helpers():
    f = torch.rand(2, 4, 3, 2, 2) * 2 - 1
    assert hbq.quantize(f, 4, "index").shape == f.shape
    assert hbq.quantize(f, 4, "bits").shape == (2, 16, 3, 2, 2)
    assert hbq.num_levels(4, "index") == 16 and hbq.num_levels(4, "bits") == 2
    assert hbq.label_channels(16, 4, "bits") == 64


def test_ste_forward_value_and_identity_gradient():
    f = (torch.rand(2, 4, 3, 3) * 1.8 - 0.9).requires_grad_()
    q = hbq.quantize_ste(f, 3)
    assert torch.equal(q.detach(), hbq.dequantize(hbq.quantize(f.detach(), 3), 3))
    (q * torch.arange(q.numel()).view_as(q)).sum().backward()
    assert torch.equal(f.grad, torch.arange(q.numel()).view_as(q).float())


def test_bad_arguments():
    with pytest.raises(ValueError, match="hbq_rounds"):
        hbq.quantize(torch.zeros(1, 1, 1, 1), 0)
    with pytest.raises(ValueError, match="target"):
        hbq.quantize(torch.zeros(1, 1, 1, 1), 4, "onehot")
    with pytest.raises(ValueError, match="multiple"):
        hbq.dequantize(torch.zeros(1, 5, 1, 1, dtype=torch.long), 4, "bits")
