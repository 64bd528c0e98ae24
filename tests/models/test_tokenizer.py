"""HBQ tokenizer: shapes, stride rule, causality, tanh range, straight-through gradient, label round trips."""

import pytest
import torch
import torch.nn.functional as F

from grn import hbq
from grn.models.tokenizer import (
    AttentionBlock,
    CausalConv3d,
    HBQTokenizer,
    RMSNorm,
    patchify,
    unpatchify,
)

TINY = dict(latent_dim=4, hbq_rounds=4, enc_channels=8, dec_channels=8, channel_mult=(1, 2), num_res_blocks=1)


def make(**overrides) -> HBQTokenizer:
    torch.manual_seed(0)
    return HBQTokenizer(**{**TINY, **overrides}).eval()


@pytest.fixture(scope="module")
def tok() -> HBQTokenizer:
    return make()


def pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1


@pytest.mark.parametrize(
    ("patch_size", "channel_mult", "stride"),
    [(1, (1,), 1), (1, (1, 2), 2), (1, (1, 2, 2), 4), (2, (1, 2), 4), (2, (1, 2, 4, 4), 16)],
)
def test_spatial_stride_rule(patch_size, channel_mult, stride):
    t = HBQTokenizer(**{**TINY, "patch_size": patch_size, "channel_mult": channel_mult})
    assert t.spatial_stride == stride == patch_size * 2 ** (len(channel_mult) - 1)
    assert t.temporal_stride == 1


def test_default_is_the_tiny_quickstart_net():
    t = HBQTokenizer()
    assert (t.latent_dim, t.hbq_rounds, t.spatial_stride) == (4, 4, 4)
    with torch.no_grad():
        f = t.encode_features(pixels(1, 3, 32, 32))
    assert f.shape == (1, 4, 8, 8)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_shapes_image_and_video(patch_size):
    t = make(patch_size=patch_size)
    s = t.spatial_stride
    with torch.no_grad():
        for x in (pixels(2, 3, 16, 16), pixels(2, 3, 3, 16, 16)):
            lat = (2, 4) + x.shape[2:-2] + (16 // s, 16 // s)
            x_rec, f, fq = t(x)
            assert x_rec.shape == x.shape
            assert f.shape == fq.shape == lat
            assert t.encode_features(x).shape == lat
            assert t.decode(f).shape == x.shape
            idx = t.encode(x)
            bits = t.encode(x, target="bits")
            assert idx.dtype == bits.dtype == torch.int64
            assert idx.shape == lat
            assert bits.shape == (2, 4 * 4) + lat[2:]
            assert t.decode_labels(idx).shape == x.shape
            assert t.decode_labels(bits, target="bits").shape == x.shape


def test_features_in_open_interval(tok):
    with torch.no_grad():
        f = tok.encode_features(pixels(4, 3, 16, 16) * 50)  # huge inputs push tanh towards its limits
    assert f.abs().max() < 1
    assert f.min() < 0 < f.max()


def test_labels_match_hbq_and_round_trip(tok):
    x = pixels(2, 3, 16, 16)
    with torch.no_grad():
        f = tok.encode_features(x)
        idx = tok.encode(x)
        assert torch.equal(idx, hbq.quantize(f, 4, "index"))
        assert idx.min() >= 0 and idx.max() < 16
        # what forward decodes (STE value) == decoding the labels == decoding the bit labels
        x_rec, _, fq = tok(x)
        assert torch.equal(fq, hbq.dequantize(idx, 4))
        torch.testing.assert_close(tok.decode_labels(idx), x_rec)
        torch.testing.assert_close(tok.decode_labels(tok.encode(x, "bits"), "bits"), x_rec)
        # quantize=False decodes the continuous features
        x_cont, f2, f2q = tok(x, quantize=False)
        assert f2q is f2
        torch.testing.assert_close(x_cont, tok.decode(f))


def test_image_equals_first_video_frame(tok):
    """An image is a 1-frame video: the T=1 fast path equals the full causal 3-D path."""
    video = pixels(2, 3, 3, 16, 16)
    with torch.no_grad():
        f_img = tok.encode_features(video[:, :, 0])
        f_vid = tok.encode_features(video)
        torch.testing.assert_close(f_img, f_vid[:, :, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tok.decode(f_img), tok.decode(f_vid)[:, :, 0], atol=1e-5, rtol=1e-5)


def test_encoder_and_decoder_are_causal_in_time(tok):
    video = pixels(1, 3, 4, 16, 16)
    changed = video.clone()
    changed[:, :, 2:] = pixels(1, 3, 2, 16, 16, seed=1)
    with torch.no_grad():
        f_a, f_b = tok.encode_features(video), tok.encode_features(changed)
        torch.testing.assert_close(f_a[:, :, :2], f_b[:, :, :2], atol=0, rtol=0)
        assert not torch.allclose(f_a[:, :, 2], f_b[:, :, 2])
        d_a, d_b = tok.decode(f_a), tok.decode(f_b)
        torch.testing.assert_close(d_a[:, :, :2], d_b[:, :, :2], atol=0, rtol=0)
        assert not torch.allclose(d_a[:, :, 2:], d_b[:, :, 2:])


def test_straight_through_gradient_reaches_encoder():
    t = make().train()
    x = pixels(2, 3, 16, 16)
    x_rec, f, fq = t(x)
    f.retain_grad()
    assert not torch.equal(fq, f)  # the decoder saw quantised values ...
    (x_rec - x).abs().mean().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0  # ... yet the gradient passed through
    assert t.encoder.conv1.weight.grad.abs().sum() > 0


def test_causal_conv_single_frame_fast_path_is_exact():
    torch.manual_seed(0)
    conv = CausalConv3d(4, 5, 3, padding=1)
    x = torch.randn(2, 4, 1, 6, 6)
    reference = F.conv3d(F.pad(x, (1, 1, 1, 1, 2, 0)), conv.weight, conv.bias)
    torch.testing.assert_close(conv(x), reference, atol=1e-5, rtol=1e-5)


def test_causal_conv_cache_equals_one_pass():
    torch.manual_seed(0)
    conv = CausalConv3d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 5, 6, 6)
    whole = conv(x)
    first = conv(x[:, :, :1])
    rest = conv(x[:, :, 1:], cache_x=x[:, :, :1])
    torch.testing.assert_close(torch.cat([first, rest], dim=2), whole, atol=1e-5, rtol=1e-5)


def test_patchify_layout_and_inverse():
    x = torch.arange(2 * 3 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 3, 2, 4, 6)
    p = patchify(x, 2)
    assert p.shape == (2, 12, 2, 2, 3)
    c, r, q, h, w = 1, 1, 0, 1, 2  # official order: channel c*4 + r*2 + q holds pixel (2h + q, 2w + r)
    assert p[0, c * 4 + r * 2 + q, 1, h, w] == x[0, c, 1, 2 * h + q, 2 * w + r]
    assert torch.equal(unpatchify(p, 2), x)
    assert patchify(x, 1) is x


def test_rms_norm_and_attention_init():
    norm = RMSNorm(6)
    assert norm.gamma.shape == (6, 1, 1, 1)
    x = torch.randn(2, 6, 3, 4, 4)
    torch.testing.assert_close(norm(x).pow(2).mean(dim=1), torch.ones(2, 3, 4, 4))
    attn = AttentionBlock(6)
    assert attn.norm.gamma.shape == (6, 1, 1)
    # zero-initialised output weights: the block only adds its (constant) projection bias at the start
    torch.testing.assert_close(attn(x) - x, attn.proj.bias.view(1, 6, 1, 1, 1).expand_as(x))
    torch.nn.init.normal_(attn.proj.weight)
    y = attn(x)
    assert y.shape == x.shape and not torch.allclose(y, x)


def test_attention_can_be_disabled_and_bad_inputs_fail():
    t = make(attention=False)
    assert not any(isinstance(m, AttentionBlock) for m in t.modules())
    with pytest.raises(ValueError, match="divisible"):
        t.encode_features(pixels(1, 3, 9, 16))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        t.encode_features(pixels(3, 16, 16))
    with pytest.raises(ValueError, match="patch_size"):
        HBQTokenizer(patch_size=4)
