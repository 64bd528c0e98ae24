"""grn.objective: the keep-probability distributions, their shift and the noised token map, shared by the C2I and
T2I/T2V trainers."""

import pytest
import torch

from grn.lit_modules.generator import GeneratorLitModule
from grn.lit_modules.t2iv import T2IVLitModule
from grn.objective import mix_with_noise, sample_keep_prob, shift_keep_prob

from tiny_nets import tiny_generator_config


def test_mixing_keeps_the_right_share():
    labels = torch.zeros(4, 3, 32, 32, dtype=torch.long)
    kp = torch.tensor([0.0, 0.3, 0.7, 1.0])
    z = mix_with_noise(labels, kp, num_levels=1000, generator=torch.Generator().manual_seed(0))
    kept = (z == 0).float().flatten(1).mean(1)
    assert kept.tolist() == pytest.approx([0.001, 0.3 + 0.7 / 1000, 0.7 + 0.3 / 1000, 1.0], abs=0.03)
    t = sample_keep_prob(20000, -0.8, 0.8, "cpu", torch.Generator().manual_seed(0))
    assert t.mean().item() == pytest.approx(0.32, abs=0.01)  # facts §3.3: mean t ≈ 0.31-0.32


def test_shift_keep_prob():
    t = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    s = shift_keep_prob(t, 4.0)
    assert s.median().item() == pytest.approx(0.2, abs=0.01)  # facts §4.4: median 0.2, quartiles 0.077 / 0.429
    assert s.quantile(0.25).item() == pytest.approx(0.077, abs=0.01)
    assert s.quantile(0.75).item() == pytest.approx(0.429, abs=0.01)
    torch.testing.assert_close(shift_keep_prob(t, 1.0), t)


def test_both_trainers_draw_from_the_shared_distributions():
    """The C2I trainer's t is the unshifted logit-normal draw, the T2I/T2V trainer's the shifted uniform one: each
    equals grn.objective's draw from the same generator, exactly."""
    c2i = GeneratorLitModule(net=tiny_generator_config(2, 2, 3, 4))
    g = torch.Generator().manual_seed(5)
    batch = {"tokens": torch.randint(0, 4, (64, 2, 4, 4), generator=g), "label": torch.arange(64) % 3}
    _, t, _ = c2i.objective(batch, torch.Generator().manual_seed(1), drop_labels=False)
    torch.testing.assert_close(t, sample_keep_prob(64, -0.8, 0.8, "cpu", torch.Generator().manual_seed(1)),
                               rtol=0, atol=0)
    t2iv = T2IVLitModule(
        net={"_target_": "grn.models.t2iv.build_t2iv", "size": "tiny", "latent_dim": 2, "hbq_rounds": 2,
             "target": "bits", "text_dim": 16},
        text_encoder={"_target_": "grn.models.text_encoder.tiny_text_encoder", "dim": 16, "num_layers": 1,
                      "num_heads": 2})
    drawn = t2iv.sample_keep_prob(1000, torch.Generator().manual_seed(2))
    uniform = torch.rand(1000, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(drawn, shift_keep_prob(uniform, 4.0), rtol=0, atol=0)
    assert drawn.median().item() == pytest.approx(0.2, abs=0.03)  # the released shift 4 moves the median to 0.2
