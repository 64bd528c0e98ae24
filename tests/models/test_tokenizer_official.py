"""The tokenizer at official fidelity: sizes, state-dict names and shapes (facts §2.1-2.2, §2.4), the
official chunked procedure (facts §2.3) re-enacted literally over our weights, and loading official files."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from grn.checkpoints.official_tokenizer import (
    load_official_tokenizer,
    official_layout,
    official_tokenizer_config,
)
from grn.models.tokenizer import (
    AttentionBlock,
    CausalConv3d,
    DownStage,
    HBQTokenizer,
    Resample,
    ResidualBlock,
    UpStage,
    patchify,
    unpatchify,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "model" / "tokenizer"
# The official layout at tiny widths: patch 2, four stages, temporal flags [0, 1, 1] (strides 16 and 4).
TINY_OFFICIAL = dict(latent_dim=4, hbq_rounds=4, patch_size=2, enc_channels=8, dec_channels=8, channel_mult=(1, 2, 4, 4),
                     num_res_blocks=1, temporal_downsample=(0, 1, 1))


def tiny_official(seed: int = 0, **overrides) -> HBQTokenizer:
    torch.manual_seed(seed)
    tok = HBQTokenizer(**{**TINY_OFFICIAL, **overrides}).eval()
    for m in tok.modules():  # a trained net's attention is not the identity: exercise it
        if isinstance(m, AttentionBlock):
            torch.nn.init.normal_(m.proj.weight, std=0.2)
    return tok


def full_size(latent_dim: int) -> HBQTokenizer:
    with torch.device("meta"):
        return HBQTokenizer(**official_layout(latent_dim))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def official_keys() -> dict[str, tuple]:
    """The 196 official names and shapes for d=16, spelled out from the description in facts §2.1 / §2.4."""
    d, keys = 16, {}

    def res(prefix, cin, cout):
        keys[f"{prefix}.residual.0.gamma"] = (cin, 1, 1, 1)
        keys[f"{prefix}.residual.2.weight"] = (cout, cin, 3, 3, 3)
        keys[f"{prefix}.residual.2.bias"] = (cout,)
        keys[f"{prefix}.residual.3.gamma"] = (cout, 1, 1, 1)
        keys[f"{prefix}.residual.6.weight"] = (cout, cout, 3, 3, 3)
        keys[f"{prefix}.residual.6.bias"] = (cout,)
        if cin != cout:
            keys[f"{prefix}.shortcut.weight"] = (cout, cin, 1, 1, 1)
            keys[f"{prefix}.shortcut.bias"] = (cout,)

    def middle(prefix, c):
        res(f"{prefix}.0", c, c)
        res(f"{prefix}.2", c, c)
        keys[f"{prefix}.1.norm.gamma"] = (c, 1, 1)
        keys[f"{prefix}.1.to_qkv.weight"] = (3 * c, c, 1, 1)
        keys[f"{prefix}.1.to_qkv.bias"] = (3 * c,)
        keys[f"{prefix}.1.proj.weight"] = (c, c, 1, 1)
        keys[f"{prefix}.1.proj.bias"] = (c,)

    def resample(prefix, c, time_out):
        """A stage's resample layer: the 2-D conv, and the temporal conv to ``time_out`` channels if non-zero."""
        keys[f"{prefix}.resample.1.weight"], keys[f"{prefix}.resample.1.bias"] = (c, c, 3, 3), (c,)
        if time_out:
            keys[f"{prefix}.time_conv.weight"], keys[f"{prefix}.time_conv.bias"] = (time_out, c, 3, 1, 1), (time_out,)

    enc = [160, 160, 320, 640, 640]
    keys["encoder.conv1.weight"], keys["encoder.conv1.bias"] = (160, 12, 3, 3, 3), (160,)
    for i in range(4):
        for j in range(2):
            res(f"encoder.downsamples.{i}.downsamples.{j}", enc[i] if j == 0 else enc[i + 1], enc[i + 1])
        if i < 3:  # spatial down-sampling; stages 1 and 2 also halve time (time_conv keeps the width)
            resample(f"encoder.downsamples.{i}.downsamples.2", enc[i + 1], enc[i + 1] if i in (1, 2) else 0)
    middle("encoder.middle", 640)
    keys["encoder.head.0.gamma"] = (640, 1, 1, 1)
    keys["encoder.head.2.weight"], keys["encoder.head.2.bias"] = (2 * d, 640, 3, 3, 3), (2 * d,)
    keys["conv1.weight"], keys["conv1.bias"] = (2 * d, 2 * d, 1, 1, 1), (2 * d,)
    keys["conv2.weight"], keys["conv2.bias"] = (d, d, 1, 1, 1), (d,)
    dec = [1024, 1024, 1024, 512, 256]
    keys["decoder.conv1.weight"], keys["decoder.conv1.bias"] = (1024, d, 3, 3, 3), (1024,)
    middle("decoder.middle", 1024)
    for i in range(4):
        for j in range(3):
            res(f"decoder.upsamples.{i}.upsamples.{j}", dec[i] if j == 0 else dec[i + 1], dec[i + 1])
        if i < 3:  # spatial up-sampling; stages 0 and 1 also double time (time_conv doubles the width)
            resample(f"decoder.upsamples.{i}.upsamples.3", dec[i + 1], 2 * dec[i + 1] if i in (0, 1) else 0)
    keys["decoder.head.0.gamma"] = (256, 1, 1, 1)
    keys["decoder.head.2.weight"], keys["decoder.head.2.bias"] = (12, 256, 3, 3, 3), (12,)
    return keys


# ------------------------------------------------------------------------------------------- sizes and keys
@pytest.mark.parametrize(
    ("d", "total", "encoder", "decoder", "conv1", "conv2"),
    [(16, 702.688, 148.522, 554.164, 1_056, 272), (64, 705.693, 150.181, 555.492, 16_512, 4_160)],
)
def test_full_size_parameter_counts_match_the_official(d, total, encoder, decoder, conv1, conv2):
    tok = full_size(d)
    assert round(count(tok) / 1e6, 3) == total  # facts §2.2, to the precision given there
    assert round(count(tok.encoder) / 1e6, 3) == encoder
    assert round(count(tok.decoder) / 1e6, 3) == decoder
    assert (count(tok.conv1), count(tok.conv2)) == (conv1, conv2)
    assert (tok.spatial_stride, tok.temporal_stride) == (16, 4)
    conv3d = [sum(isinstance(m, CausalConv3d) for m in part.modules()) for part in (tok.encoder, tok.decoder)]
    assert conv3d == [26, 34]  # the official cache-slot counts


def test_full_size_state_dict_names_and_shapes_are_official():
    expected = official_keys()
    assert len(expected) == 196
    got = {k: tuple(v.shape) for k, v in full_size(16).state_dict().items()}
    assert got == expected
    d64 = {k: tuple(v.shape) for k, v in full_size(64).state_dict().items()}
    assert set(d64) == set(expected)  # same names, only shapes change
    assert d64["conv1.weight"] == (128, 128, 1, 1, 1) and d64["decoder.conv1.weight"] == (1024, 64, 3, 3, 3)


@pytest.mark.parametrize(("name", "d"), [("hbq_image_f16d16", 16), ("hbq_joint_f16t4d64", 64)])
def test_full_size_configs_are_the_official_layout(name, d):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"} == official_layout(d)
    with torch.device("meta"):
        tok = instantiate(cfg, _convert_="all")
    assert tok.latent_dim == d and tok.hbq_rounds == 4 and count(tok) == count(full_size(d))


# ------------------------------------------------------ the official chunked procedure, re-enacted literally
class OfficialChunked:
    """Literal transcription of the official chunked encode/decode (facts §2.3) over our modules' weights: one
    cache slot per causal conv in call order, ``CACHE_T = 2`` input frames per slot, first chunk 1 frame then
    4-frame chunks (encode) and one latent at a time (decode), the "Rep" marker in the temporal up-sampler,
    and the parameter-free shortcuts applied per chunk."""

    CACHE_T = 2

    def __init__(self, tok: HBQTokenizer):
        self.tok = tok

    # -- primitives
    @staticmethod
    def causal_conv(conv: CausalConv3d, x, cache=None):
        pw, _, ph, _, pt, _ = conv._pad
        pad = [pw, pw, ph, ph, pt, 0]
        if cache is not None and pt > 0:
            x = torch.cat([cache, x], dim=2)
            pad[4] -= cache.shape[2]
        return F.conv3d(F.pad(x, pad), conv.weight, conv.bias, conv.stride)

    def cached_conv(self, conv, x):
        i = self.idx
        cache_x = x[:, :, -self.CACHE_T :].clone()
        if cache_x.shape[2] < 2 and self.feat[i] is not None:
            cache_x = torch.cat([self.feat[i][:, :, -1:], cache_x], dim=2)
        x = self.causal_conv(conv, x, self.feat[i])
        self.feat[i] = cache_x
        self.idx += 1
        return x

    @staticmethod
    def avg_down(x, cout, ft, fs):
        x = F.pad(x, (0, 0, 0, 0, (ft - x.shape[2] % ft) % ft, 0))
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6).contiguous()
        f = ft * fs * fs
        x = x.view(b, c * f, t // ft, h // fs, w // fs)
        return x.view(b, cout, c * f // cout, t // ft, h // fs, w // fs).mean(dim=2)

    @staticmethod
    def dup_up(x, cout, ft, fs, first_chunk):
        f = ft * fs * fs
        x = x.repeat_interleave(cout * f // x.shape[1], dim=1)
        b, _, t, h, w = x.shape
        x = x.view(b, cout, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4).contiguous()
        x = x.view(b, cout, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1 :] if first_chunk else x

    @staticmethod
    def spatial(seq, x):
        b, c, t, h, w = x.shape
        y = seq(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.view(b, t, *y.shape[1:]).transpose(1, 2)

    # -- blocks
    def residual(self, block: ResidualBlock, x):
        h = block.shortcut(x)
        for layer in block.residual:
            x = self.cached_conv(layer, x) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h

    def resample(self, m: Resample, x):
        if m.mode == "up" and m.temporal:
            i = self.idx
            if self.feat[i] is None:
                self.feat[i] = "Rep"
                self.idx += 1
            else:
                cache_x = x[:, :, -self.CACHE_T :].clone()
                if cache_x.shape[2] < 2 and self.feat[i] != "Rep":
                    cache_x = torch.cat([self.feat[i][:, :, -1:], cache_x], dim=2)
                if cache_x.shape[2] < 2 and self.feat[i] == "Rep":
                    cache_x = torch.cat([torch.zeros_like(cache_x), cache_x], dim=2)
                cache = None if self.feat[i] == "Rep" else self.feat[i]
                x = self.causal_conv(m.time_conv, x, cache)
                self.feat[i] = cache_x
                self.idx += 1
                b, c2, t, h, w = x.shape
                x = x.reshape(b, 2, c2 // 2, t, h, w)
                x = torch.stack((x[:, 0], x[:, 1]), 3).reshape(b, c2 // 2, 2 * t, h, w)
        x = self.spatial(m.resample, x)
        if m.mode == "down" and m.temporal:
            i = self.idx
            if self.feat[i] is None:
                self.feat[i] = x.clone()
            else:
                cache_x = x[:, :, -1:].clone()
                x = self.causal_conv(m.time_conv, torch.cat([self.feat[i][:, :, -1:], x], dim=2))
                self.feat[i] = cache_x
            self.idx += 1
        return x

    def block(self, m, x):
        if isinstance(m, ResidualBlock):
            return self.residual(m, x)
        if isinstance(m, Resample):
            return self.resample(m, x)
        return m(x)

    def encoder(self, x):
        enc = self.tok.encoder
        x = self.cached_conv(enc.conv1, x)
        for stage in enc.downsamples:
            stage: DownStage
            x_copy = x
            for m in stage.downsamples:
                x = self.block(m, x)
            s = stage.avg_shortcut
            x = x + self.avg_down(x_copy, s.out_channels, s.factor_t, s.factor_s)
        for m in enc.middle:
            x = self.block(m, x)
        return self.head(enc.head, x)

    def decoder(self, x, first_chunk):
        dec = self.tok.decoder
        x = self.cached_conv(dec.conv1, x)
        for m in dec.middle:
            x = self.block(m, x)
        for stage in dec.upsamples:
            stage: UpStage
            main = x
            for m in stage.upsamples:
                main = self.block(m, main)
            s = stage.avg_shortcut
            x = (
                main
                if s is None
                else main + self.dup_up(x, s.out_channels, s.factor_t, s.factor_s, first_chunk)
            )
        return self.head(dec.head, x)

    def head(self, layers, x):
        for m in layers:
            x = self.cached_conv(m, x) if isinstance(m, CausalConv3d) else m(x)
        return x

    # -- the two entry points
    def encode(self, pixels):
        x = patchify(pixels, 2)
        self.feat = [None] * 64
        outs = []
        for i in range(1 + (x.shape[2] - 1) // 4):
            self.idx = 0
            outs.append(self.encoder(x[:, :, :1] if i == 0 else x[:, :, 1 + 4 * (i - 1) : 1 + 4 * i]))
        mu, _log_var = self.tok.conv1(torch.cat(outs, dim=2)).chunk(2, dim=1)
        return torch.tanh(mu)

    def decode(self, features):
        x = self.tok.conv2(features)
        self.feat = [None] * 64
        outs = []
        for i in range(x.shape[2]):
            self.idx = 0
            outs.append(self.decoder(x[:, :, i : i + 1], first_chunk=i == 0))
        return unpatchify(torch.cat(outs, dim=2), 2)


@pytest.fixture(scope="module")
def tok() -> HBQTokenizer:
    return tiny_official()


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 9, 32, 32, generator=g) * 2 - 1


def test_one_pass_equals_the_official_chunked_procedure(tok, clip):
    """9 frames → 3 latents → 9 frames, our whole-clip pass vs the literal official chunk loop."""
    ref = OfficialChunked(tok)
    with torch.no_grad():
        f = tok.encode_features(clip)
        assert f.shape == (1, 4, 3, 2, 2)
        torch.testing.assert_close(f, ref.encode(clip), atol=1e-5, rtol=1e-5)
        x = tok.decode(f)
        assert x.shape == clip.shape
        torch.testing.assert_close(x, ref.decode(f), atol=1e-5, rtol=1e-5)
        # an image is encoded like frame 0 and decodes to one frame, both as the official does
        torch.testing.assert_close(
            tok.encode_features(clip[:, :, 0]), ref.encode(clip[:, :, :1])[:, :, 0], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            tok.decode(f[:, :, 0]), ref.decode(f[:, :, :1])[:, :, 0], atol=1e-5, rtol=1e-5
        )


# ------------------------------------------------------------------------------------------- checkpoint files
def test_load_official_checkpoint_strictly(tmp_path, tok, clip):
    state = tok.state_dict()
    for entry in ("ema", "vae"):
        path = tmp_path / f"{entry}.ckpt"
        payload = (
            {entry: state} if entry == "vae" else {"ema": state, "vae": {k: v * 0 for k, v in state.items()}}
        )
        torch.save(payload, path)
        loaded, cfg = load_official_tokenizer(path, latent_dim=4, return_config=True)
        assert not loaded.training
        assert cfg == official_tokenizer_config(state) and cfg["temporal_downsample"] == [False, True, True]
        assert cfg["channel_mult"] == [1, 2, 4, 4] and cfg["patch_size"] == 2 and cfg["num_res_blocks"] == 1
        with torch.no_grad():  # the ema entry wins over vae
            torch.testing.assert_close(loaded.encode_features(clip), tok.encode_features(clip))
        assert instantiate(cfg).state_dict().keys() == state.keys()


def test_official_checkpoint_errors(tmp_path, tok):
    state = tok.state_dict()
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt") as err:
        load_official_tokenizer(missing)
    assert "\n" not in str(err.value)
    bad = tmp_path / "bad.ckpt"
    torch.save({"vae": {k: v for k, v in state.items() if k != "decoder.head.0.gamma"}}, bad)
    with pytest.raises(ValueError, match=r"missing decoder\.head\.0\.gamma"):
        load_official_tokenizer(bad)
    torch.save({"vae": {**state, "decoder.extra.weight": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match=r"unexpected decoder\.extra\.weight"):
        load_official_tokenizer(bad)
    torch.save({"vae": {**state, "conv2.bias": torch.zeros(5)}}, bad)
    with pytest.raises(ValueError, match="wrong shape.*conv2.bias"):
        load_official_tokenizer(bad)
    torch.save({"model": state}, bad)
    with pytest.raises(ValueError, match="no 'ema' or 'vae'"):
        load_official_tokenizer(bad)
    torch.save({"vae": state}, bad)
    with pytest.raises(ValueError, match="latent_dim 4, expected 16"):
        load_official_tokenizer(bad, latent_dim=16)


def test_lit_module_loader_accepts_official_files(tmp_path, tok, clip):
    """The generator stages and the pipeline name a tokenizer by path: an official release file works there too."""
    from grn.checkpoints import load_tokenizer

    path = tmp_path / "HBQ_image_tokenizer_16dim_M4.ckpt"
    torch.save({"ema": tok.state_dict()}, path)
    loaded = load_tokenizer(path)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_features(clip), tok.encode_features(clip))


def test_official_file_converts_optionally_and_goes_only_where_a_tokenizer_does(tmp_path, tok, clip):
    from grn.checkpoints import load_generator, load_tokenizer
    from script_loader import load_script

    path = tmp_path / "HBQ_image_tokenizer_16dim_M4.ckpt"
    torch.save({"ema": tok.state_dict()}, path)
    load_script("convert_official").main([str(path), str(tmp_path / "tok.ckpt")])  # family read off the keys
    converted = load_tokenizer(tmp_path / "tok.ckpt")  # marked final: no EMA entries needed
    with torch.no_grad():
        torch.testing.assert_close(converted.encode_features(clip), tok.encode_features(clip))
    with pytest.raises(ValueError, match="is an official tokenizer release file, not a generator checkpoint"):
        load_generator(path)
