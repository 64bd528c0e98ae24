"""The released T2I/T2V sampler's settings (official update §F3, §B7): the ``official_t2iv`` schedule (targets
0.95·(1 - cos(...)), always Tmax passes, the output the last full prediction), ``pt_value=realised`` (the network
is told the share the previous step kept, 0 at step 0, given tokens not counted), the config keys, and fsa
networks never using the caption cache. Training's realised pt value: tests/lit_modules/test_t2iv_module.py."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from grn.models.t2iv import build_t2iv
from grn.sampling.config import SamplerConfig
from grn.sampling.refine import refine
from grn.sampling.schedules import keep_probs, official_t2iv_target
from grn.sampling.text import sample_text_to_labels

ROOT = Path(__file__).resolve().parents[2]


def test_official_targets_are_the_verified_ones():
    steps = torch.tensor([0, 9, 19, 29, 39, 47, 48, 49])
    want = torch.tensor([0.0005, 0.0484, 0.1887, 0.4065, 0.6797, 0.9196, 0.95, 0.95], dtype=torch.float64)
    got = official_t2iv_target(steps, 50.0)
    assert torch.allclose(got, want, atol=5e-5)  # the facts give 4 decimals
    table = keep_probs(50, "official_t2iv")  # step i's input = the target after step i - 1; 1 marks "output ŷ"
    assert table[0] == 0 and table[-1] == 1 and torch.allclose(table[1:50], official_t2iv_target(torch.arange(49), 50.0))
    assert table[49] == pytest.approx(0.95) and bool((table[:50] <= 0.95).all())
    assert torch.allclose(keep_probs(50, "official_t2iv", keep_prob_shift=3.0)[1:50],
                          official_t2iv_target(torch.arange(49), 50.0, 3.0))


class Rotating:
    """A stand-in network over index labels (K = 4): at its n-th call predicts ``(noise + 1 + n % 3) % K`` with
    certainty (never the noise, and a different map each pass), where noise is the map of the first call; records
    each call's input map and pt value."""

    def __init__(self):
        self.inputs, self.pts = [], []

    def __call__(self, labels, t, y):
        self.inputs.append(labels.clone())
        self.pts.append(t.clone())
        noise = self.inputs[0][: labels.shape[0]]
        pred = (noise + 1 + len(self.inputs) % 3) % 4
        return torch.nn.functional.one_hot(pred, 4).movedim(-1, 1).float() * 50.0


def test_official_schedule_runs_every_pass_and_returns_the_last_full_prediction():
    net = Rotating()
    g = torch.Generator().manual_seed(0)
    out = refine(net, torch.zeros(2, dtype=torch.long), (3, 4, 4), 4, num_steps=50, schedule="official_t2iv",
                 temperature=0.0, generator=g)
    assert len(net.inputs) == 50 and out.steps.tolist() == [50, 50]
    noise = net.inputs[0]
    assert torch.equal(out.labels, (noise + 1 + 50 % 3) % 4)  # ŷ of the 50th pass, every token
    # nominal pt: the schedule's value, 0.95 at the last pass (not 1)
    assert net.pts[0].tolist() == [0.0, 0.0] and net.pts[-1][0].item() == pytest.approx(0.95, abs=1e-6)


@pytest.mark.parametrize("region", [False, True])
def test_realised_pt_is_the_share_the_previous_step_kept(region):
    net = Rotating()
    g = torch.Generator().manual_seed(1)
    known = reg = None
    if region:  # I2V-like: frame 0 given, frames 1.. generated; the given tokens do not count
        known = torch.randint(0, 4, (2, 3, 3, 4, 4), generator=torch.Generator().manual_seed(2))
        reg = torch.ones(1, 1, 3, 1, 1, dtype=torch.bool)
        reg[:, :, 0] = False
    out = refine(net, torch.zeros(2, dtype=torch.long), (3, 3, 4, 4), 4, num_steps=12, schedule="official_t2iv",
                 temperature=0.0, generator=g, pt_value="realised", known=known, region=reg)
    assert torch.equal(net.pts[0], torch.zeros(2))
    sel = torch.ones(2, 3, 3, 4, 4, dtype=torch.bool) if reg is None else reg.expand(2, 3, 3, 4, 4)
    noise = net.inputs[0]
    for i in range(1, 12):
        kept = (net.inputs[i] != noise) & sel  # the rotating prediction never equals the noise
        share = kept.flatten(1).sum(1).float() / sel.flatten(1).sum(1)
        torch.testing.assert_close(net.pts[i], share)
        nominal = official_t2iv_target(i - 1, 12.0).float()
        assert (share - nominal).abs().max() < 0.25  # a Bernoulli draw around the schedule's value
    assert not torch.allclose(torch.stack(net.pts[1:]), torch.stack([official_t2iv_target(i - 1, 12.0).float()
                                                                      for i in range(1, 12)])[:, None].expand(-1, 2))
    if region:
        assert torch.equal(out.labels[:, :, 0], known[:, :, 0])


def test_config_keys_and_the_official_preset():
    assert SamplerConfig().pt_value == "nominal" and SamplerConfig().schedule == "linear"  # defaults unchanged
    with pytest.raises(ValueError, match="pt_value"):
        SamplerConfig(pt_value="measured")
    preset = OmegaConf.load(ROOT / "conf" / "sampler" / "official_t2iv.yaml")
    base = OmegaConf.load(ROOT / "conf" / "sampler" / "default.yaml")
    cfg = SamplerConfig.build(OmegaConf.to_container(OmegaConf.merge(base, {k: v for k, v in preset.items()
                                                                             if k != "defaults"})))
    assert (cfg.schedule, cfg.num_steps, cfg.pt_value) == ("official_t2iv", 50, "realised")
    assert cfg.refine_options()["pt_value"] == "realised"
    from grn.entrypoints.validate import ConfigError, check_sampler

    check_sampler({"schedule": "official_t2iv", "pt_value": "realised"})
    with pytest.raises(ConfigError, match="pt_value"):
        check_sampler({"pt_value": "x"})


class NoCache(torch.nn.Module):
    """Forwards to an fsa network and fails if the caption cache is asked for."""

    def __init__(self, net):
        super().__init__()
        self.net, self.num_levels, self.caption_kv_static = net, net.num_levels, net.caption_kv_static

    def text_cache(self, *a):
        raise AssertionError("the caption cache must not be used under fsa")

    forward_cached = text_cache

    def forward(self, *a, **kw):
        return self.net(*a, **kw)


def test_fsa_networks_sample_without_the_caption_cache():
    torch.manual_seed(0)
    net = build_t2iv("tiny", latent_dim=2, hbq_rounds=2, text_dim=16, attention="fsa").eval()
    texts = [torch.randn(3, 16), torch.randn(5, 16)]
    kw = dict(sampler=SamplerConfig(num_steps=4, schedule="official_t2iv", pt_value="realised", cfg_scale=2.0),
              negative_texts=[torch.randn(1, 16)])
    a = sample_text_to_labels(NoCache(net), texts, (4, 4, 4), generator=torch.Generator().manual_seed(3), **kw)
    b = sample_text_to_labels(net, texts, (4, 4, 4), generator=torch.Generator().manual_seed(3), cache_text=False,
                              **kw)
    assert torch.equal(a.labels, b.labels)
