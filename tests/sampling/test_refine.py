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
    shifted = keep_probs(50, "cosine", snr_shift=4.0)
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
