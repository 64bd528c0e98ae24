"""Official first-frame image-to-video in the text sampler (official update §B5-B9): the network gets the given
first frame as clean condition tokens in both guidance branches and the generated frames as the map, the pt value
is over the generated tokens only, the output's frame 0 is the first frame's labels, and the loop replays a plain
restatement (tests/reference_sampler.py) step for step. ``i2v_mode`` comes from the network or ``sampler.i2v_mode``."""

from __future__ import annotations

import pytest
import torch

from grn.models.t2iv import build_t2iv
from grn.sampling.config import SamplerConfig
from grn.sampling.text import first_frame_condition, pad_texts, sample_text_to_labels
from reference_sampler import plain_refine
from tiny_nets import input_dependent_init, random_captions

TEXT_DIM, SHAPE = 16, (8, 3, 3, 3)  # C = 8 bit labels, 3 latent frames (1 given, 2 generated), 3×3


def strong_t2iv(seed=1, **kw):
    torch.manual_seed(seed)
    return input_dependent_init(build_t2iv("tiny", latent_dim=4, hbq_rounds=2, target="bits", text_dim=TEXT_DIM,
                                           **kw))


class Spy(torch.nn.Module):
    """Records every uncached forward (labels, pt values, first frame) of the T2IV network."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []
        self.num_levels, self.target, self.i2v_mode = net.num_levels, net.target, net.i2v_mode

    def forward(self, labels, t, text, lens, h_div_w_template=None, first_frame=None):
        self.calls.append((labels.clone(), t.clone(), None if first_frame is None else first_frame.clone()))
        return self.net(labels, t, text, lens, h_div_w_template, first_frame=first_frame)


def setup(seed=1):
    texts, negs = random_captions(5, 3, dim=TEXT_DIM, seed=seed), random_captions(2, 4, dim=TEXT_DIM, seed=seed + 1)
    first = torch.randint(0, 2, (2, 8, 3, 3), generator=torch.Generator().manual_seed(8))
    return texts, negs, first


def test_first_frame_mode_replays_the_plain_loop_with_the_condition_in_both_branches():
    net = strong_t2iv()
    assert net.i2v_mode == "first_frame"  # the default of the network and of the project's configs
    texts, negs, first = setup()
    b = len(texts)
    feats, lens = pad_texts(list(texts) + list(negs))

    def official(z, t, ids):  # the official network pass: frames 1… generated, frame 0 the clean condition
        ln = lens[ids]
        out = net(z[:, :, 1:], t, feats[ids, : int(ln.max())], ln, first_frame=z[:, :, :1])
        return torch.cat([out.new_zeros(out[:, :, :, :1].shape), out], dim=3)

    known, region = first_frame_condition(first, SHAPE[1])
    opts = dict(cfg=2.5, tau=1.1, schedule="cosine", shift=2.0)
    ref, ref_inputs = plain_refine(official, torch.arange(b), 2, SHAPE, b + torch.arange(b),
                                   torch.Generator().manual_seed(4), steps=6, known=known, region=region,
                                   pt_over_region=True, **opts)
    spy = Spy(net)
    res = sample_text_to_labels(spy, texts, SHAPE, negative_texts=negs, num_steps=6, schedule="cosine",
                                keep_prob_shift=2.0, cfg_scale=2.5, temperature=1.1, first_frame=first,
                                generator=torch.Generator().manual_seed(4), cache_text=False)
    assert len(spy.calls) == 6
    for i, ((z, t, ff), (rz, rt, _)) in enumerate(zip(spy.calls, ref_inputs)):
        assert z.shape == (2 * b, 8, 2, 3, 3), "the network sees the generated frames only"
        assert torch.equal(ff[:b, :, 0], first) and torch.equal(ff[b:, :, 0], first), f"step {i}: both branches"
        assert torch.equal(z[:b], rz[:, :, 1:]) and torch.allclose(t[:b], rt, atol=1e-6)
    assert torch.equal(res.labels, ref) and torch.equal(res.labels[:, :, 0], first)
    # the pt value is t itself, not the share of real tokens over the whole map (the region form)
    assert spy.calls[0][1].eq(0).all() and spy.calls[3][1][0] == pytest.approx(float(ref_inputs[3][1][0]))
    cached = sample_text_to_labels(net, texts, SHAPE, negative_texts=negs, num_steps=6, schedule="cosine",
                                   keep_prob_shift=2.0, cfg_scale=2.5, temperature=1.1, first_frame=first,
                                   generator=torch.Generator().manual_seed(4))  # the text_only caption cache
    assert torch.equal(cached.labels, res.labels)


def test_region_mode_counts_the_given_frame_in_the_nominal_pt_and_realised_pt_makes_the_forms_agree():
    texts, negs, first = setup()
    runs = {}
    for mode in ("first_frame", "region"):
        for pt in ("nominal", "realised"):
            spy = Spy(strong_t2iv())
            res = sample_text_to_labels(spy, texts, SHAPE, negative_texts=negs, num_steps=5, schedule="cosine",
                                        cfg_scale=2.0, first_frame=first, generator=torch.Generator().manual_seed(3),
                                        cache_text=False, sampler=SamplerConfig(i2v_mode=mode, pt_value=pt))
            runs[mode, pt] = (res.labels, [c[1][:2] for c in spy.calls], [c[2] is not None for c in spy.calls])
            assert torch.equal(res.labels[:, :, 0], first)
    assert all(runs["first_frame", "nominal"][2]) and not any(runs["region", "nominal"][2])
    t_ff, t_region = runs["first_frame", "nominal"][1][2], runs["region", "nominal"][1][2]
    share = 1 / 3  # one of three latent frames given
    torch.testing.assert_close(t_region, share + (1 - share) * t_ff)
    # realised pt: the share of the generated tokens the previous step kept, the same draws in both forms, and the
    # two forms are the same network function: the same clips
    assert runs["first_frame", "realised"][1][0].eq(0).all()
    for a, b in zip(runs["first_frame", "realised"][1], runs["region", "realised"][1]):
        torch.testing.assert_close(a, b)
    assert torch.equal(runs["first_frame", "realised"][0], runs["region", "realised"][0])


def test_the_network_setting_is_the_default_and_the_sampler_key_overrides_it():
    texts, negs, first = setup()
    spy = Spy(strong_t2iv(i2v_mode="region"))
    sample_text_to_labels(spy, texts, SHAPE, num_steps=2, first_frame=first, cache_text=False,
                          generator=torch.Generator().manual_seed(0))
    assert spy.calls[0][2] is None and spy.calls[0][0].shape[2] == 3  # region: the T-frame map
    spy.calls.clear()
    sample_text_to_labels(spy, texts, SHAPE, num_steps=2, first_frame=first, cache_text=False, i2v_mode="first_frame",
                          generator=torch.Generator().manual_seed(0))
    assert spy.calls[0][2] is not None and spy.calls[0][0].shape[2] == 2
    with pytest.raises(ValueError, match="i2v_mode"):
        SamplerConfig(i2v_mode="both")
