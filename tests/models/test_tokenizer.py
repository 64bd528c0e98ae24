"""HBQ tokenizer: shapes, stride rules, causality, tanh range, straight-through gradient, label round trips,
temporal chunking and spatial tiling (official-fidelity checks: test_tokenizer_official.py)."""

import pytest
import torch
import torch.nn.functional as F

from grn import hbq
from grn.models.tokenizer import (
    AttentionBlock,
    AvgDown3D,
    CausalConv3d,
    DupUp3D,
    HBQTokenizer,
    RMSNorm,
    blend_ramps,
    patchify,
    tile_starts,
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


@pytest.mark.parametrize(("flags", "stride"), [(None, 1), ([1], 2), ([0, 1], 2), ([1, 1], 4), ([True, 0], 2)])
def test_temporal_stride_rule(flags, stride):
    t = make(channel_mult=(1, 2, 2), temporal_downsample=flags)
    assert t.temporal_stride == stride
    n = 1 + 2 * stride
    with torch.no_grad():
        f = t.encode_features(pixels(1, 3, n, 16, 16))
        assert f.shape[2] == 3  # 1 + s_t·k frames -> 1 + k latents ...
        assert t.decode(f).shape[2] == n  # ... and back
    with pytest.raises(ValueError, match="stages down-sample"):
        make(channel_mult=(1, 2, 2), temporal_downsample=[0, 1, 1])  # the last stage never resamples


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


# ------------------------------------------------------------------------------- temporal stride 4, chunking
# The official layout at tiny widths (strides 16 and 4); fidelity to the official network itself is checked
# in test_tokenizer_official.py.
OFFICIAL_TINY = dict(TINY, patch_size=2, channel_mult=(1, 2, 4, 4), temporal_downsample=(0, 1, 1))


@pytest.fixture(scope="module")
def tok4() -> HBQTokenizer:
    t = make(**OFFICIAL_TINY)
    for m in t.modules():  # non-trivial attention, as after training
        if isinstance(m, AttentionBlock):
            torch.nn.init.normal_(m.proj.weight, std=0.2)
    return t


def test_video_frame_counts_and_bad_lengths(tok4):
    with torch.no_grad():
        for frames, latents in [(1, 1), (5, 2), (9, 3)]:
            f = tok4.encode_features(pixels(1, 3, frames, 32, 32))
            assert f.shape == (1, 4, latents, 2, 2)
            assert tok4.decode(f).shape == (1, 3, frames, 32, 32)
        with pytest.raises(ValueError, match=r"1 \+ 4·k frames.*got 8: trim it to 5 or pad it to 9") as err:
            tok4.encode_features(pixels(1, 3, 8, 32, 32))  # the official code would silently drop 3 frames
        assert "\n" not in str(err.value)
        with pytest.raises(ValueError, match="temporal_chunk"):
            tok4.encode_features(pixels(1, 3, 5, 32, 32), temporal_chunk=0)


def test_chunked_encode_and_decode_equal_one_pass(tok4):
    """Frame 0, then 4 frames (n=1, the official chunking) or 8 frames (n=2) at a time: 9 frames -> 3 latents,
    same numbers as one pass (measured max abs difference ~1e-7 encode, ~2e-6 decode)."""
    video = pixels(1, 3, 9, 32, 32)
    with torch.no_grad():
        f = tok4.encode_features(video)
        x = tok4.decode(f)
        for n in (1, 2):
            torch.testing.assert_close(tok4.encode_features(video, temporal_chunk=n), f, atol=1e-5, rtol=0)
            torch.testing.assert_close(tok4.decode(f, temporal_chunk=n), x, atol=1e-5, rtol=0)
        idx = tok4.encode(video, temporal_chunk=1)
        torch.testing.assert_close(
            tok4.decode_labels(idx, temporal_chunk=1), tok4.decode_labels(idx), atol=1e-5, rtol=0
        )


def test_temporal_causality_at_stride_4(tok4):
    """Latent k sees frames <= 4k only; decoded frames 0..4k depend on latents <= k only."""
    video = pixels(1, 3, 9, 32, 32)
    changed = video.clone()
    changed[:, :, 5:] = pixels(1, 3, 4, 32, 32, seed=1)
    with torch.no_grad():
        f_a, f_b = tok4.encode_features(video), tok4.encode_features(changed)
        torch.testing.assert_close(f_a[:, :, :2], f_b[:, :, :2], atol=0, rtol=0)
        assert not torch.allclose(f_a[:, :, 2], f_b[:, :, 2])
        torch.testing.assert_close(tok4.decode(f_a)[:, :, :5], tok4.decode(f_b)[:, :, :5], atol=0, rtol=0)


def test_shortcuts_are_parameter_free_inverses():
    x = torch.randn(2, 6, 3, 4, 4)
    up = DupUp3D(6, 3, factor_t=2, factor_s=2)  # 6 -> 3·8 = 24 channels: each repeated 4 times
    down = AvgDown3D(3, 6, factor_t=2, factor_s=2)  # 24 folded channels averaged in groups of 4
    assert not list(up.parameters()) and not list(down.parameters())
    y = up(x)
    assert y.shape == (2, 3, 6, 8, 8)
    torch.testing.assert_close(down(y), x)
    assert up(x, first_chunk=True).shape[2] == 5  # latent frame 0 stands for one frame
    torch.testing.assert_close(down(up(x, first_chunk=True)[:, :, 1:])[:, :, 1:], x[:, :, 2:])


# ------------------------------------------------------------------------------------------ spatial tiling
def test_tile_starts_and_blend_weights_partition_unity():
    assert tile_starts(16, 8, 4) == [0, 4, 8]
    assert tile_starts(17, 8, 2) == [0, 6, 9]
    assert tile_starts(8, 16, 4) == [0]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(16, 8, 8)
    for starts, tile, scale in [([0, 4, 8], 8, 3), ([0, 6, 9], 8, 2), ([0, 1, 2, 3], 4, 1)]:
        total = torch.zeros((starts[-1] + tile) * scale, dtype=torch.float64)
        for s0, w in zip(starts, blend_ramps(starts, tile, scale), strict=True):
            assert w.min() > 0
            total[s0 * scale : (s0 + tile) * scale] += w
        torch.testing.assert_close(total, torch.ones_like(total))


def test_tiling_blends_exactly_for_a_local_decoder(monkeypatch):
    """With a decoder that has no spatial context (nearest upsampling), tiling must reproduce it exactly."""
    t = make(patch_size=2)
    s = t.spatial_stride

    def local(z, temporal_chunk):
        return z[:, :3].repeat_interleave(s, dim=-1).repeat_interleave(s, dim=-2) * 2

    monkeypatch.setattr(t, "_decode_video", local)
    f = pixels(2, 4, 3, 20, 13)
    torch.testing.assert_close(t.decode(f, tile_latent=8, tile_overlap=3), local(f, None), atol=1e-6, rtol=0)
    torch.testing.assert_close(t.decode(f[:, :, 0], tile_latent=5, tile_overlap=0), local(f, None)[:, :, 0])


def test_tiled_decode_is_close_to_untiled():
    """tiny.yaml's layout (stride 4) with non-zero attention, 32×32 random latents (128 px). Tiles of 16
    latents overlapping by 8 (9 tiles): max abs difference 0.066 (mean 0.011) on outputs of magnitude ≤ 0.58,
    against 0.54 with no overlap; the rest is context the tiles cannot see (receptive field, attention)."""
    t = make(enc_channels=32, dec_channels=32, patch_size=2)
    for m in t.modules():
        if isinstance(m, AttentionBlock):
            torch.nn.init.normal_(m.proj.weight, std=0.2)
    f = pixels(1, 4, 32, 32)
    with torch.no_grad():
        full = t.decode(f)
        tiled = t.decode(f, tile_latent=16, tile_overlap=8)
        seams = t.decode(f, tile_latent=16, tile_overlap=0)
        assert torch.equal(t.decode(f, tile_latent=32), full)  # one tile: the untiled path
    assert tiled.shape == full.shape == (1, 3, 128, 128)
    diff = (tiled - full).abs().max().item()
    assert diff < 0.1
    assert diff < (seams - full).abs().max().item() / 4


def test_tiled_video_decode_with_temporal_chunks(tok4):
    """Tiles and temporal chunks compose: chunking inside each tile changes nothing (max diff ~1e-6)."""
    f = pixels(1, 4, 3, 4, 6)
    with torch.no_grad():
        whole = tok4.decode(f, tile_latent=3, tile_overlap=1)
        chunked = tok4.decode(f, tile_latent=3, tile_overlap=1, temporal_chunk=1)
    assert whole.shape == (1, 3, 9, 64, 96)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
