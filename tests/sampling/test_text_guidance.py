"""T2I/T2V sampling: negative prompt as the unconditional branch, no unconditional pass without guidance,
reproducible seeds, the cosine schedule, image-to-video with the first latent frame held bit-identical."""

import pytest
import torch

from grn.models.t2iv import build_t2iv
from grn.sampling.schedules import keep_probs
from grn.sampling.text import (
    TextConditionedNet,
    encode_first_frame,
    first_frame_condition,
    pad_texts,
    sample_text_to_labels,
)
from tiny_nets import random_captions

TEXT_DIM = 16


def tiny_net(seed=0):
    torch.manual_seed(seed)
    net = build_t2iv("tiny", latent_dim=4, hbq_rounds=2, target="bits", text_dim=TEXT_DIM)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.eval()


def captions(*lens, seed=0):
    return random_captions(*lens, dim=TEXT_DIM, seed=seed)


class Spy(torch.nn.Module):
    """Wraps the network and records each step's (rows, keep_prob, caption lengths); counts caption encodings."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls, self.text_passes = net, [], 0
        self.num_levels = net.num_levels
        self.caption_kv_static = net.caption_kv_static  # the sampler asks whether the text cache is valid

    def text_cache(self, text, lens):
        self.text_passes += 1
        self.table = text.clone()
        return self.net.text_cache(text, lens)

    def forward_cached(self, labels, t, cache, h_div_w_template=None):
        self.calls.append((labels.shape[0], t.clone(), cache.lens.clone()))
        return self.net.forward_cached(labels, t, cache, h_div_w_template)

    def forward(self, labels, t, text, lens, h_div_w_template=None):
        self.calls.append((labels.shape[0], t.clone(), lens.clone()))
        return self.net(labels, t, text, lens, h_div_w_template)


def sample(net, seed=0, **kw):
    kw.setdefault("num_steps", 3)
    return sample_text_to_labels(net, kw.pop("texts", captions(4, 2)), kw.pop("shape", (8, 2, 3, 3)),
                                 generator=torch.Generator().manual_seed(seed), **kw)


def test_same_seed_same_labels_and_seed_matters():
    net = tiny_net()
    neg = captions(1, seed=5)
    a = sample(net, seed=3, negative_texts=neg, cfg_scale=3.0).labels
    assert a.shape == (2, 8, 2, 3, 3) and a.dtype == torch.long and set(a.unique().tolist()) <= {0, 1}
    assert torch.equal(a, sample(net, seed=3, negative_texts=neg, cfg_scale=3.0).labels)
    assert not torch.equal(a, sample(net, seed=4, negative_texts=neg, cfg_scale=3.0).labels)


def test_negative_prompt_is_the_unconditional_branch():
    net = tiny_net()
    texts, negs = captions(4, 2), captions(3, 1, seed=7)
    spy = Spy(net)
    sample(spy, texts=texts, negative_texts=negs, cfg_scale=2.5, num_steps=3)
    rows, t, lens = spy.calls[0]
    assert rows == 4 and lens.tolist() == [4, 2, 3, 1]  # cond rows, then each sample's own negative prompt
    assert torch.equal(spy.table[2, :3], negs[0]) and torch.equal(spy.table[3, :1], negs[1])
    assert spy.text_passes == 1 and len(spy.calls) == 3  # captions encoded once, not once per step
    # the guided logits are uncond + s·(cond - uncond) with uncond from the negative prompt
    table, tlens = pad_texts(texts + negs)
    cond_net = TextConditionedNet(net, table, tlens)
    z = torch.randint(0, 2, (2, 8, 2, 3, 3))
    kp = torch.tensor([0.3, 0.3])
    with torch.no_grad():
        both = cond_net(torch.cat([z, z]), torch.cat([kp, kp]), torch.tensor([0, 1, 2, 3]))
        assert torch.allclose(both[2:], net(z, kp, table[2:, :3], tlens[2:]), atol=1e-5)
        assert torch.allclose(both[:2], net(z, kp, table[:2, :4], tlens[:2]), atol=1e-5)
        uncached = TextConditionedNet(net, table, tlens, cache_text=False)
        assert torch.allclose(both, uncached(torch.cat([z, z]), torch.cat([kp, kp]), torch.arange(4)), atol=1e-5)
    # a different negative prompt changes the samples (same seed); without guidance it is never used
    a = sample(net, texts=texts, negative_texts=negs, cfg_scale=4.0).labels
    b = sample(net, texts=texts, negative_texts=captions(3, 1, seed=8), cfg_scale=4.0).labels
    assert not torch.equal(a, b)
    spy = Spy(net)
    c = sample(spy, texts=texts, negative_texts=negs, cfg_scale=1.0).labels
    assert all(rows == 2 for rows, *_ in spy.calls)  # no unconditional pass at scale 1
    assert torch.equal(c, sample(net, texts=texts, negative_texts=None, cfg_scale=1.0).labels)
    with pytest.raises(ValueError, match="null_class"):
        sample(net, texts=texts, negative_texts=None, cfg_scale=2.0)
    shared = sample(net, texts=texts, negative_texts=captions(3, seed=7), cfg_scale=4.0).labels
    assert shared.shape == a.shape


def test_cosine_schedule_feeds_shifted_keep_probabilities():
    spy = Spy(tiny_net())
    res = sample(spy, num_steps=6, schedule="cosine", keep_prob_shift=3.0)
    expected = keep_probs(6, "cosine", 3.0)[:6].float()
    assert torch.allclose(torch.stack([t[0] for _, t, *_ in spy.calls]), expected, atol=1e-6)
    assert torch.allclose(res.stats["keep_prob"], expected, atol=1e-6)


def test_complexity_aware_sampling_on_video_maps():
    res = sample(tiny_net(), schedule="complexity_aware", complexity_warmup_steps=2, alpha=8, k=-10.0, b=12.0,
                 complexity_min_steps=4, complexity_max_steps=8)
    assert res.labels.shape == (2, 8, 2, 3, 3)
    assert ((res.steps >= 4) & (res.steps <= 8)).all()


def test_image_to_video_holds_the_first_frame_bit_identical():
    net = tiny_net()
    first = torch.randint(0, 2, (2, 8, 3, 3), generator=torch.Generator().manual_seed(1))
    spy = Spy(net)
    runs = [sample(spy if s == 0 else net, seed=s, shape=(8, 4, 3, 3), first_frame=first, negative_texts=captions(1),
                   cfg_scale=2.0).labels for s in (0, 1)]
    for labels in runs:
        assert torch.equal(labels[:, :, 0], first)
    assert not torch.equal(runs[0][:, :, 1:], runs[1][:, :, 1:])  # the rest is generated
    # the network is told that the given frame is real: keep-probability 1/4 at the first step
    assert torch.allclose(spy.calls[0][1], torch.full((4,), 0.25))
    known, region = first_frame_condition(first, 4)
    assert known.shape == (2, 8, 4, 3, 3) and region.flatten().tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="video label_shape"):
        sample(net, shape=(8, 3, 3), first_frame=first)


def test_first_frame_encoding_equals_latent_frame_zero_of_the_clip():
    from grn.models.tokenizer import HBQTokenizer

    torch.manual_seed(0)
    tok = HBQTokenizer(latent_dim=4, hbq_rounds=2, patch_size=2, enc_channels=8, dec_channels=8,
                       channel_mult=[1, 1], temporal_downsample=[True]).eval()
    clip = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        full = tok.encode(clip, target="bits")
    assert full.shape[2] == 3  # 1 + 4 frames, temporal stride 2 -> 3 latent frames
    assert torch.equal(encode_first_frame(tok, clip[:, :, 0], target="bits")[:, :, 0], full[:, :, 0])


def test_captions_to_pixels_with_the_offline_stand_ins():
    """Captions -> labels through the one T2I/T2V entry (``sample_t2iv``, index labels), decoded to pixels; formerly
    ``sample_from_captions``, which returned the network's (bit) layout: the asserts compare that layout."""
    from grn import hbq
    from grn.models.text_encoder import tiny_text_encoder
    from grn.models.tokenizer import HBQTokenizer
    from grn.sampling.text import sample_t2iv

    enc = tiny_text_encoder(dim=TEXT_DIM, num_layers=1, num_heads=2)
    torch.manual_seed(0)
    tok = HBQTokenizer(latent_dim=4, hbq_rounds=2, patch_size=2, enc_channels=8, dec_channels=8,
                       channel_mult=[1, 1], temporal_downsample=[True]).eval()
    net = tiny_net()
    image = torch.rand(1, 3, 16, 16) * 2 - 1

    def encode(caps):
        return [f.float() for f in enc.encode_texts(caps)]

    first = encode_first_frame(tok, image, net.target)[:, :, 0]
    res = sample_t2iv(net, encode, ["a boat at dusk"], (8, 3, 4, 4), torch.Generator().manual_seed(0),
                      first_frame=first, num_steps=3, cfg_scale=2.0)
    with torch.no_grad():
        pixels = tok.decode_labels(res.labels, target="index")
    assert pixels.shape == (1, 3, 5, 16, 16)  # 3 latent frames at temporal stride 2
    bits = hbq.index_labels_to_bit_labels(res.labels, 2)
    assert torch.equal(bits[:, :, :1], encode_first_frame(tok, image, "bits"))
    res2 = sample_t2iv(net, encode, ["a boat at dusk", "snow"], (8, 4, 4), num_steps=3,
                       negative_prompt=["", "blurry"], cfg_scale=2.0)
    assert hbq.index_labels_to_bit_labels(res2.labels, 2).shape == (2, 8, 4, 4)
