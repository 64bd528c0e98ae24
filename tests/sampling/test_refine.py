"""Refinement sampler: shapes, determinism, interval rule, schedules, skipped unconditional passes."""

import math

import pytest
import torch

from grn.sampling.guidance import apply_guidance, guidance_scale
from grn.sampling.refine import normalized_entropy, refine, sample_categorical
from grn.sampling.schedules import keep_probs


class RecordingNet(torch.nn.Module):
    """Logits favouring class (y mod K); records every call's batch size, keep-probability and classes."""

    def __init__(self, k=4, c=3):
        super().__init__()
        self.k, self.c, self.calls = k, c, []

    def forward(self, z, t, y):
        self.calls.append((z.shape[0], float(t[0]), y.clone()))
        logits = torch.zeros(z.shape[0], self.k, *z.shape[1:])
        logits[torch.arange(z.shape[0]), y % self.k] = 3.0
        return logits


def run(net, **kw):
    y = torch.tensor([0, 1, 2, 3, 1])
    g = torch.Generator().manual_seed(kw.pop("seed", 0))
    return refine(net, y, (3, 4, 4), num_levels=4, null_class=9, generator=g, **kw)


def test_shapes_and_stats():
    res = run(RecordingNet(), num_steps=7)
    assert res.labels.shape == (5, 3, 4, 4) and res.labels.dtype == torch.int64
    assert res.labels.min() >= 0 and res.labels.max() < 4
    for key in ("keep_prob", "cfg_scale", "entropy", "kept_fraction"):
        assert res.stats[key].shape == (7,)
    assert res.stats["kept_fraction"][-1] == 1.0
    assert torch.all((res.stats["entropy"] >= 0) & (res.stats["entropy"] <= 1))


def test_deterministic_under_seed_and_varies_with_seed():
    a = run(RecordingNet(), num_steps=5, temperature=1.5, seed=3)
    b = run(RecordingNet(), num_steps=5, temperature=1.5, seed=3)
    c = run(RecordingNet(), num_steps=5, temperature=1.5, seed=4)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)


def test_keep_probabilities_fed_to_net_follow_linear_schedule():
    net = RecordingNet()
    run(net, num_steps=10)
    assert [t for _, t, _ in net.calls] == pytest.approx([i / 10 for i in range(10)])


def test_kept_fraction_tracks_schedule():
    net = RecordingNet()
    y = torch.zeros(64, dtype=torch.long)
    res = refine(net, y, (3, 8, 8), 4, num_steps=4, generator=torch.Generator().manual_seed(0))
    assert res.stats["kept_fraction"][:3] == pytest.approx([0.25, 0.5, 0.75], abs=0.02)


def test_uncond_pass_only_inside_interval_and_batched():
    net = RecordingNet()
    run(net, num_steps=10, cfg_scale=2.0, cfg_interval=[0.3, 1.0])
    for i, (batch, _, y) in enumerate(net.calls):
        inside = 3 < i < 10  # t_i = i / 10 strictly inside (0.3, 1.0)
        assert batch == (10 if inside else 5)
        if inside:
            assert torch.equal(y[5:], torch.full((5,), 9))
    net_off = RecordingNet()
    run(net_off, num_steps=10, cfg_scale=1.0)
    assert all(b == 5 for b, _, _ in net_off.calls)  # no guidance -> never an unconditional pass


def test_interval_rule_matches_official():
    assert guidance_scale(0.0, 3.0, [0.0, 1.0]) == 3.0  # lo == 0 includes t = 0
    assert guidance_scale(0.44, 3.0, [0.44, 1.0]) == 1.0  # strict > lo
    assert guidance_scale(0.46, 3.0, [0.44, 1.0]) == 3.0
    assert guidance_scale(1.0, 3.0, [0.0, 1.0]) == 1.0  # strict < hi
    with pytest.raises(ValueError):
        guidance_scale(0.5, 2.0, [0.6, 0.4])
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert apply_guidance(c, u, 3.0).item() == 4.0


def test_schedules():
    lin = keep_probs(4, "linear")
    assert lin.tolist() == [0, 0.25, 0.5, 0.75, 1]
    cos = keep_probs(50, "cosine")
    assert cos[0] == 0 and cos[-1] == 1 and torch.all(cos[1:] > cos[:-1])
    assert cos[25] == pytest.approx(1 - math.cos(math.pi / 4))
    shifted = keep_probs(50, "cosine", keep_prob_shift=4.0)
    assert torch.all(shifted[1:-1] < cos[1:-1])  # the shift spends more steps at low keep-probability
    with pytest.raises(ValueError, match="unknown schedule"):
        keep_probs(10, "exponential")


def test_categorical_sampling_matches_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0]).view(1, 4, 1).expand(1, 4, 40000).contiguous()
    draws = sample_categorical(logits, 1.0, torch.Generator().manual_seed(0)).flatten()
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert torch.allclose(freq, torch.softmax(logits[0, :, 0], 0), atol=0.01)
    hot = sample_categorical(logits, 0.5, torch.Generator().manual_seed(0)).flatten()
    assert (hot == 3).float().mean() > freq[3]  # lower temperature sharpens
    assert torch.all(sample_categorical(logits, 0, None) == 3)


def test_entropy_is_normalised():
    uniform = torch.zeros(2, 16, 3)
    assert torch.allclose(normalized_entropy(uniform), torch.ones(2))
    peaked = torch.full((2, 16, 3), -1e4)
    peaked[:, 0] = 0
    assert torch.allclose(normalized_entropy(peaked), torch.zeros(2), atol=1e-6)



class EntropyNet(torch.nn.Module):
    """Class 0: confident (peaked) logits; class 1: flat logits. Records the batch size of every call."""

    def __init__(self, k=8):
        super().__init__()
        self.k, self.sizes = k, []

    def forward(self, z, t, y):
        self.sizes.append(z.shape[0])
        logits = torch.zeros(z.shape[0], self.k, *z.shape[1:])
        logits[y == 0, 0] = 30.0
        return logits


def test_complexity_aware_step_counts_follow_entropy():
    net = EntropyNet()
    y = torch.tensor([0, 1, 0, 1])
    res = refine(net, y, (2, 4, 4), 8, schedule="complexity_aware", complexity_warmup_steps=3, alpha=20, k=40.0, b=8.0,
                 complexity_min_steps=6, complexity_max_steps=40, generator=torch.Generator().manual_seed(0))
    # H ~ 0 -> round(40·0 + 8) = 8 steps; H = 1 -> round(48) clipped to 40
    assert res.steps.tolist() == [8, 40, 8, 40]
    assert res.stats["warmup_entropy"][0] < 1e-6 and res.stats["warmup_entropy"][1] == pytest.approx(1.0)
    # finished samples leave the batch: no forward pass is spent on them
    assert net.sizes == [4] * 8 + [2] * 32
    assert res.stats["active"].tolist() == [4] * 8 + [2] * 32
    assert torch.all(res.labels[0] == 0)


def test_complexity_aware_with_k0_equals_fixed_linear():
    kw = dict(generator=None, temperature=1.3)
    a = refine(RecordingNet(), torch.tensor([0, 1, 2]), (3, 4, 4), 4, schedule="complexity_aware", complexity_warmup_steps=5,
               alpha=20, k=0.0, b=20.0, complexity_min_steps=10, complexity_max_steps=30, **{**kw, "generator": torch.Generator().manual_seed(5)})
    b = refine(RecordingNet(), torch.tensor([0, 1, 2]), (3, 4, 4), 4, schedule="linear", num_steps=20,
               **{**kw, "generator": torch.Generator().manual_seed(5)})
    assert a.steps.tolist() == [20, 20, 20]
    assert torch.equal(a.labels, b.labels)


def test_power_cos_guidance():
    from grn.sampling.guidance import guidance_scales

    t = torch.tensor([0.0, 0.5, 1.0])
    s = guidance_scales(t, 2.0, cfg_type="power_cos", cfg_power=1.0)
    assert s.tolist() == pytest.approx([1.0, 2.0, 3.0])  # 1 + cfg·(1 - cos(pi t))/2
    net = RecordingNet()
    run(net, num_steps=4, cfg_scale=2.0, cfg_type="power_cos")
    assert [bsz for bsz, _, _ in net.calls] == [5, 10, 10, 10]  # w(0) = 0: no unconditional pass at t = 0


class NoiseNet(torch.nn.Module):
    """Fresh random logits on every call (from its own seeded generator)."""

    def __init__(self, k):
        super().__init__()
        self.k, self.g, self.inputs = k, torch.Generator().manual_seed(0), []

    def forward(self, z, t, y):
        self.inputs.append(z.clone())
        return torch.randn(z.shape[0], self.k, *z.shape[1:], generator=self.g)


@pytest.mark.parametrize("selection", ["random", "confidence"])
def test_mask_baseline_never_revises_kept_tokens(selection):
    k = 1000  # large K: a noise token equals the final one by chance with p = 1/1000
    for revise in (False, True):
        net = NoiseNet(k)
        res = refine(net, torch.zeros(4, dtype=torch.long), (2, 8, 8), k, num_steps=8, selection=selection,
                     revise=revise, generator=torch.Generator().manual_seed(1))
        noise = net.inputs[0]  # step 0 sees the initial noise map
        maps = [*net.inputs, res.labels]
        # tokens that held a prediction (not the noise) and then changed value at the next step
        revised = sum(int(((a != noise) & (b != a)).sum()) for a, b in zip(maps[1:], maps[2:]))
        if revise:
            assert revised > 100  # GRN re-draws its kept set every step
        else:
            assert revised <= 3  # chance coincidences with the noise only


def test_confidence_selection_keeps_exact_counts():
    from grn.sampling.selection import select_keep

    conf = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    sel = torch.ones_like(conf, dtype=torch.bool)
    keep = select_keep("confidence", torch.tensor([0.25, 0.5]), torch.zeros(2), conf, None, sel, None)
    assert keep.flatten(1).sum(1).tolist() == [12, 24]
    assert conf[0][keep[0]].min() >= conf[0][~keep[0]].max()  # the most confident ones


def test_region_regeneration_keeps_outside_bit_identical():
    known = torch.randint(0, 4, (5, 3, 4, 4), generator=torch.Generator().manual_seed(2))
    region = torch.zeros(5, 1, 4, 4, dtype=torch.bool)
    region[:, :, 1:3, 1:3] = True
    net = RecordingNet()
    res = run(net, num_steps=6, known=known, region=region, temperature=2.0)
    outside = ~region.expand_as(known)
    assert torch.equal(res.labels[outside], known[outside])
    assert not torch.equal(res.labels[~outside], known[~outside])
    # the network is told that the given tokens are real: t_in = share given + share of region · t
    share_known = 1 - 4 / 16
    assert net.calls[0][1] == pytest.approx(share_known)
    with pytest.raises(ValueError, match="both known labels and a region"):
        run(RecordingNet(), num_steps=2, known=known)


class FlipOracle(torch.nn.Module):
    """A binary-label net that knows the answer ``truth``: as a relative-bit net it says which input bits flip."""

    def __init__(self, truth, relative=True):
        super().__init__()
        self.truth, self.relative = truth, relative

    def forward(self, z, t, y):
        target = (z ^ self.truth) if self.relative else self.truth
        logits = torch.zeros(z.shape[0], 2, *z.shape[1:])
        return logits.scatter_(1, target.unsqueeze(1), 30.0)


def test_relative_bit_target_applies_predicted_flips():
    truth = torch.randint(0, 2, (3, 8, 4, 4), generator=torch.Generator().manual_seed(1))
    y = torch.zeros(3, dtype=torch.long)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    rel = refine(FlipOracle(truth), y, (8, 4, 4), 2, num_steps=5, generator=g(), bit_target="relative")
    assert torch.equal(rel.labels, truth)
    # read as absolute labels, the same flip predictions give something else
    wrong = refine(FlipOracle(truth), y, (8, 4, 4), 2, num_steps=5, generator=g(), bit_target="absolute")
    assert not torch.equal(wrong.labels, truth)
    with pytest.raises(ValueError, match="binary labels"):
        refine(FlipOracle(truth), y, (8, 4, 4), 4, num_steps=5, bit_target="relative")


def test_video_labels_with_a_temporal_region():
    """[B, C, T, h, w] maps: the first latent frame is given (image-to-video style), the rest is generated."""
    known = torch.randint(0, 4, (2, 3, 5, 4, 4), generator=torch.Generator().manual_seed(2))
    region = torch.ones(1, 1, 5, 1, 1, dtype=torch.bool)
    region[:, :, 0] = False
    net = RecordingNet()
    res = refine(net, torch.tensor([1, 2]), (3, 5, 4, 4), 4, num_steps=6, known=known, region=region,
                 generator=torch.Generator().manual_seed(0))
    assert res.labels.shape == (2, 3, 5, 4, 4)
    assert torch.equal(res.labels[:, :, 0], known[:, :, 0])
    # the generated frames follow the net (p = 0.87 for class y mod 4; chance is 0.25), not the given labels
    assert (res.labels[0, :, 1:] == 1).float().mean() > 0.7 and (res.labels[1, :, 1:] == 2).float().mean() > 0.7
