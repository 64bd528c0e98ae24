"""Caption encoder: the tiny offline stand-in (shapes, trimming, 512 truncation, no padding leak, seeds), the
official umT5 checkpoint layout (renaming + same maths as a plain re-statement of Wan's T5 encoder), and
one-line errors for missing weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from grn.models.text_encoder import (
    MAX_TEXT_LEN,
    clean_caption,
    hf_to_wan_t5,
    load_umt5_encoder,
    tiny_text_encoder,
    wan_t5_to_hf,
)


@pytest.fixture(scope="module")
def encoder():
    return tiny_text_encoder(dim=32, num_layers=2, num_heads=4, seed=0)


def test_shapes_trimming_and_truncation(encoder):
    caps = ["a cat", "a red  car\non &amp; the road", "é" * 400, "x" * 700]
    out = encoder.encode_texts(caps)
    # byte-level: one token per UTF-8 byte of the cleaned caption, plus the end token; at most 512
    assert [o.shape for o in out] == [(6, 32), (24, 32), (MAX_TEXT_LEN, 32), (MAX_TEXT_LEN, 32)]
    assert clean_caption(caps[1]) == "a red car on & the road"
    ids, mask = encoder.tokenize(caps)
    assert ids.shape == mask.shape == (4, MAX_TEXT_LEN)  # padded to 512, as the official tokenizer call
    assert mask.sum(1).tolist() == [6, 24, 512, 512]
    assert all(torch.isfinite(o).all() for o in out)


def test_running_to_the_longest_caption_equals_the_full_512_pass(encoder):
    caps = ["short", "a somewhat longer caption with more words"]
    ours = encoder.encode_texts(caps)
    ids, mask = encoder.tokenize(caps)
    with torch.no_grad():
        full = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    for o, f, n in zip(ours, full, mask.sum(1)):
        assert torch.allclose(o, f[:n], atol=1e-5)
    alone = encoder.encode_texts(["short"])[0]  # padding / batch-mates never leak into a caption
    assert torch.allclose(alone, ours[0], atol=1e-5)


def test_seeded_stand_in_is_reproducible_and_caption_dependent(encoder):
    again = tiny_text_encoder(dim=32, num_layers=2, num_heads=4, seed=0).encode_texts(["a dog"])[0]
    assert torch.equal(again, encoder.encode_texts(["a dog"])[0])
    other = tiny_text_encoder(dim=32, num_layers=2, num_heads=4, seed=1).encode_texts(["a dog"])[0]
    assert not torch.allclose(other, again)
    assert not torch.allclose(encoder.encode_texts(["a cog"])[0], again)
    with pytest.raises(TypeError, match="list of captions"):
        encoder.encode_texts("a dog")


def test_missing_weights_are_one_line_errors(tmp_path):
    tok = tmp_path / "umt5-xxl"
    tok.mkdir()
    with pytest.raises(FileNotFoundError, match="models_t5_umt5-xxl-enc-bf16.pth") as err:
        load_umt5_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", tok)
    assert "\n" not in str(err.value) and "bytedance-research/GRN" in str(err.value)
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="tokenizer folder") as err:
        load_umt5_encoder(tmp_path / "w.pth", tmp_path / "missing")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------- the official (Wan) layout and its maths
def wan_t5_reference(sd, ids, mask, heads, buckets=32, max_dist=128):
    """Wan's T5 encoder re-stated: unscaled attention + per-layer bidirectional relative buckets, gated GELU(tanh)."""

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def bucket(rel):
        half = buckets // 2
        out = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        large = exact + (torch.log(rel.float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
        return out + torch.where(rel < exact, rel, large.clamp(max=half - 1))

    x = sd["token_embedding.weight"][ids]
    b, n, dim = x.shape
    rel = bucket(torch.arange(n)[None] - torch.arange(n)[:, None])
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(layers):
        p = lambda name: sd[f"blocks.{i}.{name}"]  # noqa: E731
        h = rms(x, p("norm1.weight"))
        q, k, v = (F.linear(h, p(f"attn.{c}.weight")).view(b, n, heads, -1) for c in "qkv")
        bias = p("pos_embedding.embedding.weight")[rel].permute(2, 0, 1)[None]
        scores = torch.einsum("binc,bjnc->bnij", q, k) + bias
        scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        o = torch.einsum("bnij,bjnc->binc", scores.softmax(-1), v).reshape(b, n, -1)
        x = x + F.linear(o, p("attn.o.weight"))
        h = rms(x, p("norm2.weight"))
        x = x + F.linear(F.gelu(F.linear(h, p("ffn.gate.0.weight")), approximate="tanh")
                         * F.linear(h, p("ffn.fc1.weight")), p("ffn.fc2.weight"))
    return rms(x, sd["norm.weight"])


def test_official_layout_loads_and_matches_wan_t5_maths(encoder, tmp_path):
    hf = encoder.model.state_dict()
    wan = hf_to_wan_t5(hf)
    assert set(wan) >= {"token_embedding.weight", "norm.weight", "blocks.1.ffn.gate.0.weight",
                        "blocks.0.pos_embedding.embedding.weight"}
    back = wan_t5_to_hf(wan)
    assert all(torch.equal(back[k], hf[k]) for k in hf)
    torch.save(wan, tmp_path / "enc.pth")
    encoder.tokenizer.save_pretrained(tmp_path / "tok")
    cfg = encoder.model.config
    shape = dict(vocab_size=cfg.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    loaded = load_umt5_encoder(tmp_path / "enc.pth", tmp_path / "tok", dtype="float32", config=shape, dim=32)
    with pytest.raises(ValueError, match="32-wide encoder, the config says dim=4096"):
        load_umt5_encoder(tmp_path / "enc.pth", tmp_path / "tok", dtype="float32", config=shape, dim=4096)
    caps = ["a small house", "two"]
    ours = loaded.encode_texts(caps)
    ids, mask = loaded.tokenize(caps)
    with torch.no_grad():
        ref = wan_t5_reference(wan, ids[:, :14], mask[:, :14], heads=4)
    for o, r, n in zip(ours, ref, mask.sum(1)):
        assert torch.allclose(o, r[:n], atol=1e-5)
    assert len(ours[0]) == 14


def test_configs_instantiate(compose_cfg, tmp_path, monkeypatch):
    from hydra.utils import instantiate

    cfg = compose_cfg("train", ["model/text_encoder=tiny", "model/generator=t2iv_tiny"])
    enc = instantiate(cfg.model.text_encoder)
    assert enc.dim == cfg.model.generator.text_dim == 32
    monkeypatch.setenv("GRN_WEIGHTS_DIR", str(tmp_path))
    cfg = compose_cfg("train", ["model/text_encoder=umt5_xxl", "model/generator=t2iv_2b"])
    assert cfg.model.text_encoder.dim == cfg.model.generator.text_dim == 4096
    with pytest.raises(Exception, match="models_t5_umt5-xxl-enc-bf16.pth"):
        instantiate(cfg.model.text_encoder)
