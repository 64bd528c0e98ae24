"""Sampler fidelity of the text sampler (T2I, T2V, I2V): every token not kept reverts to the initial noise, and
``sample_text_to_labels`` replays a plain restatement of the loop (tests/reference_sampler.py) step for step,
with the caption table's negative prompts as the unconditional branch."""

from __future__ import annotations


import pytest
import torch

from grn.models.t2iv import build_t2iv
from grn.sampling.text import first_frame_condition, pad_texts, sample_text_to_labels
from reference_sampler import plain_refine
from tiny_nets import input_dependent_init, random_captions

TEXT_DIM = 16


def strong_t2iv(seed=0):
    """The tiny T2I/T2V network with fan-in-scaled weights (gain 2), unit norms: logits follow the input map."""
    torch.manual_seed(seed)
    return input_dependent_init(build_t2iv("tiny", latent_dim=4, hbq_rounds=2, target="bits", text_dim=TEXT_DIM))


def captions(*lens, seed=0):
    return random_captions(*lens, dim=TEXT_DIM, seed=seed)


class Spy(torch.nn.Module):
    """Records the labels of every uncached forward of the T2IV network."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []
        self.num_levels, self.target = net.num_levels, net.target

    def forward(self, labels, t, text, lens, h_div_w_template=None):
        self.calls.append((labels.clone(), t.clone()))
        return self.net(labels, t, text, lens, h_div_w_template)


def table_net(net, texts, negatives):
    """``(z, t, ids) -> logits`` over the caption table [prompts | negatives], each call as wide as its longest
    caption (what a plain caller would do)."""
    feats, lens = pad_texts(list(texts) + list(negatives))

    def call(z, t, ids):
        ln = lens[ids]
        return net(z, t, feats[ids, : int(ln.max())], ln)

    return call


CASES = {
    "t2i": dict(shape=(8, 3, 3), frames=None),
    "t2v": dict(shape=(8, 3, 3, 3), frames=None),
    "i2v": dict(shape=(8, 3, 3, 3), frames=3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_text_sampler_replays_plain_restatement(case):
    shape = CASES[case]["shape"]
    net = strong_t2iv(seed=1)
    texts, negs = captions(5, 3, 4, seed=1), captions(2, 2, 3, seed=2)
    b = len(texts)
    # the network's prediction depends on its input map (else a wrong map would go unnoticed)
    g = torch.Generator().manual_seed(5)
    z1, z2 = (torch.randint(0, 2, (b, *shape), generator=g) for _ in range(2))
    call = table_net(net, texts, negs)
    with torch.no_grad():
        a, c = call(z1, torch.full((b,), 0.5), torch.arange(b)), call(z2, torch.full((b,), 0.5), torch.arange(b))
    assert (a.argmax(1) != c.argmax(1)).float().mean() > 0.2
    known = region = first = None
    if CASES[case]["frames"]:
        first = torch.randint(0, 2, (b, 8, 3, 3), generator=torch.Generator().manual_seed(8))
        known, region = first_frame_condition(first, CASES[case]["frames"])
    opts = dict(cfg=2.5, tau=1.1, schedule="cosine", shift=2.0)
    ref, ref_inputs = plain_refine(call, torch.arange(b), 2, shape, b + torch.arange(b),
                                   torch.Generator().manual_seed(4), steps=6, known=known, region=region, **opts)
    spy = Spy(net)
    res = sample_text_to_labels(spy, texts, shape, negative_texts=negs, num_steps=6, schedule="cosine",
                                keep_prob_shift=2.0, cfg_scale=2.5, temperature=1.1, first_frame=first,
                                generator=torch.Generator().manual_seed(4), cache_text=False)
    assert len(spy.calls) == 6
    for i, ((z, t), (rz, rt, _)) in enumerate(zip(spy.calls, ref_inputs)):
        assert torch.equal(z[:b], rz), f"step {i}: network input differs from the plain loop's"
        assert torch.allclose(t[:b], rt, atol=1e-6)
    assert torch.equal(res.labels, ref)
    if first is not None:
        assert torch.equal(res.labels[:, :, 0], first)


@pytest.mark.parametrize("case", ["t2i", "i2v"])
def test_text_sampler_keeps_initial_noise(monkeypatch, case):
    drawn = []
    real = torch.randint

    def randint(*a, **kw):
        out = real(*a, **kw)
        drawn.append((out, out.clone()))
        return out

    monkeypatch.setattr(torch, "randint", randint)
    shape = CASES[case]["shape"]
    first = None
    if CASES[case]["frames"]:
        first = real(0, 2, (2, 8, 3, 3), generator=torch.Generator().manual_seed(8))
    sample_text_to_labels(strong_t2iv(), captions(3, 4), shape, negative_texts=captions(2), num_steps=5,
                          cfg_scale=2.0, first_frame=first, generator=torch.Generator().manual_seed(0))
    assert drawn
    for live, copy in drawn:
        assert torch.equal(live, copy), "the initial noise map was written to during sampling"
