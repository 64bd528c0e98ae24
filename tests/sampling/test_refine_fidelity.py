"""Sampler fidelity: tokens that are not kept revert to the *initial* noise (paper Alg. 3; facts §3.5), on every
sampler path, and the loop replays the official C2I sampler draw for draw.

Three kinds of check:

* the initial noise map is unchanged after sampling (the map ``torch.randint`` returned is captured and compared
  with a copy taken when it was drawn);
* at every step the share of the network's input tokens equal to the initial noise is ``1 - t_i`` within binomial
  bounds, with a network whose prediction never equals the noise (so the share is exactly the tokens not kept);
* replay parity: :mod:`reference_sampler` (a plain restatement written from the facts) and ``refine`` consume one
  seeded generator in the same order; every per-step network input and the labels must be equal, with networks
  whose logits depend strongly on their input (asserted).
"""

from __future__ import annotations

import math

import pytest
import torch

from grn import hbq
from grn.sampling.entry import sample_labels
from grn.models.generator import build_generator
from grn.sampling.refine import refine
from reference_sampler import official_c2i_sample, plain_refine
from tiny_nets import input_dependent_init, tiny_generator_config


# ---- helpers ---------------------------------------------------------------------------------------------------
class NoiseCapture:
    """Wraps ``torch.randint``: keeps every tensor it returns and a copy of it as drawn."""

    def __init__(self, monkeypatch):
        self.drawn: list[tuple[torch.Tensor, torch.Tensor]] = []
        real = torch.randint

        def randint(*args, **kwargs):
            out = real(*args, **kwargs)
            self.drawn.append((out, out.clone()))
            return out

        monkeypatch.setattr(torch, "randint", randint)

    def assert_unchanged(self):
        assert self.drawn, "no noise map was drawn"
        for live, copy in self.drawn:
            assert torch.equal(live, copy), "the initial noise map was written to during sampling"


class AvoidNoise(torch.nn.Module):
    """Predicts ``(noise + 1) mod K`` with certainty, so a token equals the noise iff it was not kept.
    Records every call's ``(z, t)``. Every sample must stay active (fixed-length schedules): the rows of a call are
    the batch, then the guided rows again."""

    def __init__(self, noise: torch.Tensor, k: int):
        super().__init__()
        self.noise, self.k, self.calls = noise, k, []
        self.target = (noise + 1) % k

    def forward(self, z, t, y):
        self.calls.append((z.clone(), t.clone()))
        reps = -(-z.shape[0] // self.target.shape[0])
        tgt = self.target.repeat(reps, *([1] * (z.dim() - 1)))[: z.shape[0]]
        return torch.zeros(z.shape[0], self.k, *z.shape[1:]).scatter_(1, tgt.unsqueeze(1), 30.0)


def first_randint(seed, k, shape):
    return torch.randint(0, k, shape, generator=torch.Generator().manual_seed(seed))


def binomial_ok(share, expected, n, sigmas=5.0):
    sd = math.sqrt(max(expected * (1 - expected), 1e-12) / n)
    return abs(share - expected) <= sigmas * sd + 1.5 / n


def strong_grn(target: str, seed: int = 0):
    """The tiny C2I network with fan-in-scaled weights (gain 2; 0.3 on the adaLN modulation so that the class and t
    do not drown the tokens), unit norms and small biases: its logits follow its input map closely."""
    torch.manual_seed(seed)
    return input_dependent_init(build_generator("tiny", latent_dim=4, hbq_rounds=3, target=target, num_classes=10,
                                                input_size=8))


class EchoNet(torch.nn.Module):
    """Logits = 4 · one-hot of the token one position to the left (wrapping) + a class term: the prediction of a
    token is mostly its neighbour's *input* value, so a wrong input map shows in every output."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, z, t, y):
        shifted = torch.roll(z, 1, dims=-1)
        logits = 4.0 * torch.nn.functional.one_hot(shifted, self.k).movedim(-1, 1).float()
        cls = (y.view(-1, *([1] * (z.dim() - 1))) % self.k).unsqueeze(1)
        return logits.scatter_add(1, cls.expand(-1, 1, *z.shape[1:]), torch.full((z.shape[0], 1, *z.shape[1:]), 1.5)) \
            + 0.5 * t.view(-1, *([1] * z.dim()))


def assert_input_dependent(net, k, shape, null):
    """Logits move by much more than a small fraction of their spread between two random input maps."""
    g = torch.Generator().manual_seed(123)
    z1, z2 = torch.randint(0, k, shape, generator=g), torch.randint(0, k, shape, generator=g)
    t, y = torch.full((shape[0],), 0.5), torch.arange(shape[0]) % 10
    with torch.no_grad():
        a, b = net(z1, t, y).float(), net(z2, t, y).float()
    change = (a - b).abs().mean() / a.std()
    assert change > 0.5, f"the test network barely depends on its input (relative change {change:.3f})"
    # and the prediction itself changes for most tokens
    assert (a.argmax(1) != b.argmax(1)).float().mean() > 0.2


class Recorder(torch.nn.Module):
    """Wraps a network; records the conditional rows (the first ``n_cond`` of each call) as ``(z, t, y)``."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, z, t, y):
        self.calls.append((z.clone(), t.clone(), y.clone()))
        return self.net(z, t, y)


# ---- 1. the initial noise is never written to ------------------------------------------------------------------
SAMPLER_PATHS = {
    "linear": dict(num_steps=6),
    "cosine": dict(num_steps=6, schedule="cosine", keep_prob_shift=2.0),
    "complexity_aware": dict(schedule="complexity_aware", complexity_warmup_steps=2, alpha=8, k=4.0, b=4.0, complexity_min_steps=4, complexity_max_steps=8),
    "complexity_official": dict(schedule="complexity_aware_official", num_steps=12, complexity_warmup_steps=2, k=8.0, b=2.0,
                                complexity_min_steps=4),
    "guided": dict(num_steps=6, cfg_scale=2.5, cfg_interval=[0.2, 1.0], temperature=1.3),
    "power_cos": dict(num_steps=6, cfg_scale=2.0, cfg_type="power_cos", cfg_power=1.5),
    "mask_based": dict(num_steps=6, revise=False),
    "confidence": dict(num_steps=6, selection="confidence"),
    "confidence_mask": dict(num_steps=6, selection="confidence", revise=False),
}


@pytest.mark.parametrize("path", list(SAMPLER_PATHS))
def test_initial_noise_unchanged(monkeypatch, path):
    cap = NoiseCapture(monkeypatch)
    net = EchoNet(4)
    res = refine(net, torch.tensor([0, 1, 2, 3]), (3, 6, 6), 4, null_class=9,
                 generator=torch.Generator().manual_seed(0), **SAMPLER_PATHS[path])
    assert res.labels.shape == (4, 3, 6, 6)
    cap.assert_unchanged()


def test_initial_noise_unchanged_region_and_video(monkeypatch):
    cap = NoiseCapture(monkeypatch)
    known = torch.zeros(2, 3, 5, 4, 4, dtype=torch.long)
    region = torch.ones(1, 1, 5, 1, 1, dtype=torch.bool)
    region[:, :, 0] = False
    refine(EchoNet(4), torch.tensor([1, 2]), (3, 5, 4, 4), 4, num_steps=5, known=known, region=region,
           generator=torch.Generator().manual_seed(0))
    cap.assert_unchanged()


# ---- 2. the share of noise in every step's input is 1 - t_i ------------------------------------------------------
FIXED_PATHS = {
    "linear": (dict(num_steps=6), lambda i: i / 6),
    "cosine": (dict(num_steps=6, schedule="cosine"), lambda i: 1 - math.cos(math.pi / 2 * i / 6)),
    "guided_tau": (dict(num_steps=6, cfg_scale=2.0, cfg_interval=[0.3, 1.0], temperature=1.31), lambda i: i / 6),
    "mask_based": (dict(num_steps=6, revise=False), lambda i: i / 6),
    "complexity_aware_k0": (dict(schedule="complexity_aware", complexity_warmup_steps=2, alpha=6, k=0.0, b=6.0, complexity_min_steps=4,
                                 complexity_max_steps=8), lambda i: i / 6),
    "complexity_official": (dict(schedule="complexity_aware_official", num_steps=10, complexity_warmup_steps=2, k=0.0,
                                 b=4.0, complexity_min_steps=4), lambda i: i / 10 if i <= 2 else 0.2 + 0.8 * (i - 2) / 4),
}


@pytest.mark.parametrize("path", list(FIXED_PATHS))
def test_share_of_initial_noise_in_net_input_is_one_minus_t(path):
    kwargs, t_of = FIXED_PATHS[path]
    k, shape, seed = 4, (8, 4, 8, 8), 3
    noise = first_randint(seed, k, shape)
    net = AvoidNoise(noise, k)
    refine(net, torch.zeros(8, dtype=torch.long), shape[1:], k, null_class=9,
           generator=torch.Generator().manual_seed(seed), **kwargs)
    n = noise.numel()
    cond_calls = [z[:8] for z, _ in net.calls]
    assert torch.equal(cond_calls[0], noise)
    for i, z in enumerate(cond_calls):
        share = float((z == noise).float().mean())
        assert binomial_ok(share, 1 - t_of(i), n), f"step {i}: share {share:.3f}, expected {1 - t_of(i):.3f}"
        # every other token is the network's prediction from the step before
        assert torch.equal(z[z != noise], net.target[z != noise])


def test_confidence_selection_keeps_exactly_round_t_n_and_the_rest_is_noise():
    k, shape, seed = 4, (2, 4, 8, 8), 5
    noise = first_randint(seed, k, shape)
    net = AvoidNoise(noise, k)
    refine(net, torch.zeros(2, dtype=torch.long), shape[1:], k, num_steps=5, selection="confidence",
           generator=torch.Generator().manual_seed(seed))
    per_sample = noise[0].numel()
    for i, (z, _) in enumerate(net.calls):
        kept = (z != noise).flatten(1).sum(1)
        assert kept.tolist() == [round(i / 5 * per_sample)] * 2


# ---- 3. replay parity with the official C2I loop ------------------------------------------------------------------
OFFICIAL_CASES = {
    "no_guidance": dict(cfg=1.0, tau=1.0),
    "interval_tau": dict(cfg=2.35, interval=(0.3, 1.0), tau=1.31),
    "power_cos": dict(cfg=2.0, power=1.5, tau=0.9),
}


@pytest.mark.parametrize("target", ["index", "bits"])
@pytest.mark.parametrize("case", list(OFFICIAL_CASES))
def test_replays_official_c2i_sampler(target, case):
    opts = OFFICIAL_CASES[case]
    net = strong_grn(target, seed=1)
    k, c = net.num_levels, net.label_channels
    assert_input_dependent(net, k, (4, c, 8, 8), null=10)
    y = torch.tensor([0, 3, 7, 9])
    steps = 8
    ref, ref_inputs, _ = official_c2i_sample(net, y, k, (c, 8, 8), 10, torch.Generator().manual_seed(7),
                                             steps=steps, **opts)
    rec = Recorder(net)
    guidance = dict(cfg_scale=opts["cfg"], temperature=opts["tau"])
    if "power" in opts:
        guidance.update(cfg_type="power_cos", cfg_power=opts["power"])
    else:
        guidance.update(cfg_interval=list(opts.get("interval", (0.0, 1.0))))
    res = refine(rec, y, (c, 8, 8), k, num_steps=steps, null_class=10,
                 generator=torch.Generator().manual_seed(7), **guidance)
    assert len(rec.calls) == steps
    for i, ((z, t, yy), (rz, rt, ry)) in enumerate(zip(rec.calls, ref_inputs)):
        assert torch.equal(z[:4], rz), f"step {i}: network input differs from the official loop's"
        assert torch.allclose(t[:4], rt, atol=1e-6), f"step {i}: keep-probability differs"
        assert torch.equal(yy[:4], ry)
    assert torch.equal(res.labels, ref)


def _c2i_entry_points():
    """The C2I sampling entry points: ``sample_labels`` (eval.py and the pipeline call it) and the Lightning
    module's ``sample`` (the sample-grid, FID and entropy callbacks call it)."""
    from grn.lit_modules.generator import GeneratorLitModule

    def module_sample(net, y, g, **kw):
        module = GeneratorLitModule(net=tiny_generator_config(4, 3, 10, 8, target=net.target), ema_decays=[0.9])
        module.net.load_state_dict(net.state_dict())
        # the callbacks sample inside ema_weights(); make the EMA the same weights
        module.emas["ema1"].load_state_dict({k: v.clone() for k, v in module.emas["ema1"].state_dict().items()})
        return module.sample(y, generator=g, **kw), module.net

    def plain(net, y, g, **kw):
        return sample_labels(net, y, g, **kw), net

    return {"sample_labels": plain, "GeneratorLitModule.sample": module_sample}


@pytest.mark.parametrize("entry", ["sample_labels", "GeneratorLitModule.sample"])
@pytest.mark.parametrize("target", ["index", "bits"])
def test_c2i_entry_points_replay_official_sampler(target, entry):
    """Per-step network inputs and labels (GRN_bit labels converted to index labels) equal the official loop's."""
    net = strong_grn(target, seed=2)
    k, c = net.num_levels, net.label_channels
    y = torch.tensor([1, 4, 4, 8, 10])  # 10 = the null class as a label: still a valid input
    ref, ref_inputs, _ = official_c2i_sample(net, y, k, (c, 8, 8), 10, torch.Generator().manual_seed(3), steps=6,
                                             cfg=2.0, interval=(0.2, 1.0), tau=1.2)
    calls = []
    fn = _c2i_entry_points()[entry]
    hooked = {}

    def hook(module, args):
        calls.append(args[0][:5].clone())

    # the module path copies the weights into its own network: hook whichever network runs
    orig = GRN_forward_hook_target(net, hooked, hook)
    try:
        result, used = fn(net, y, torch.Generator().manual_seed(3), num_steps=6, cfg_scale=2.0,
                          cfg_interval=[0.2, 1.0], temperature=1.2)
    finally:
        orig()
    if target == "bits":
        ref = hbq.bit_labels_to_index_labels(ref, net.hbq_rounds)
    assert len(calls) == 6
    for i, (z, (rz, _, _)) in enumerate(zip(calls, ref_inputs)):
        assert torch.equal(z, rz), f"step {i}: network input differs from the official loop's"
    assert torch.equal(result.labels, ref)


def GRN_forward_hook_target(net, hooked, hook):
    """Register ``hook`` as a forward pre-hook on every GRN network built while sampling (and on ``net``)."""
    from grn.models.generator import GRN

    real_init = GRN.__init__
    handles = [net.register_forward_pre_hook(hook)]

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        handles.append(self.register_forward_pre_hook(hook))

    GRN.__init__ = init

    def undo():
        GRN.__init__ = real_init
        for h in handles:
            h.remove()

    return undo


class ComplexityNet(torch.nn.Module):
    """Input-dependent logits whose sharpness differs per class, so the entropy at the decision spreads the step
    counts over the clip range: class c has logit scale (c + 1) · 0.2 on an echo of its input."""

    def __init__(self, k):
        super().__init__()
        self.echo = EchoNet(k)

    def forward(self, z, t, y):
        scale = ((y % 10).float() + 1.0) * 0.2
        return self.echo(z, t, y) * scale.view(-1, *([1] * z.dim()))


@pytest.mark.parametrize("guided", [False, True])
def test_replays_official_complexity_aware_sampler(guided):
    k, shape = 8, (3, 6, 6)
    net = ComplexityNet(k)
    y = torch.arange(8)
    assert_input_dependent(net, k, (8, *shape), null=10)
    wp, steps, tmin = 3, 24, 8
    # calibrate k, b so that the decision entropies of this net land inside the clip range
    opts = dict(wp=wp, k=20.0, b=3.0, tmin=tmin)
    cfg = dict(cfg=2.0, interval=(0.1, 1.0)) if guided else {}
    ref, ref_inputs, info = official_c2i_sample(net, y, k, shape, 10, torch.Generator().manual_seed(4), steps=steps,
                                                method="complexity_aware", tau=1.2, **opts, **cfg)
    totals = info["total"]
    assert len(set(totals.tolist())) >= 3, f"step counts should differ per sample, got {totals.tolist()}"
    rec = Recorder(net)
    res = refine(rec, y, shape, k, schedule="complexity_aware_official", num_steps=steps, complexity_warmup_steps=wp,
                 k=opts["k"], b=opts["b"], complexity_min_steps=tmin, temperature=1.2, null_class=10,
                 cfg_scale=cfg.get("cfg", 1.0), cfg_interval=list(cfg.get("interval", (0.0, 1.0))),
                 generator=torch.Generator().manual_seed(4))
    assert res.steps.tolist() == totals.tolist()
    assert torch.allclose(res.stats["warmup_entropy"].double(), info["entropy"], atol=1e-5)
    for i, (z, t, yy) in enumerate(rec.calls):
        active = (res.steps > i).nonzero().squeeze(1)
        n = active.numel()
        rz, rt, _ = ref_inputs[i]
        assert torch.equal(yy[:n], y[active])
        assert torch.equal(z[:n], rz[active]), f"step {i}: network input differs from the official loop's"
        assert torch.allclose(t[:n], rt[active], atol=1e-6), f"step {i}: t {t[:n]} vs {rt[active]}"
    assert torch.equal(res.labels, ref)


# ---- 4. the project's own variants against their plain restatement -----------------------------------------------
VARIANTS = {
    "cosine_shift": dict(schedule="cosine", shift=3.0),
    "confidence": dict(selection="confidence"),
    "mask_based": dict(revise=False),
    "confidence_mask": dict(selection="confidence", revise=False),
    "guided_mask": dict(revise=False, cfg=2.0, interval=(0.2, 1.0), tau=1.3),
}


def _refine_kwargs(opts):
    return dict(schedule=opts.get("schedule", "linear"), keep_prob_shift=opts.get("shift", 1.0),
                selection=opts.get("selection", "random"), revise=opts.get("revise", True),
                cfg_scale=opts.get("cfg", 1.0), cfg_interval=list(opts.get("interval", (0.0, 1.0))),
                temperature=opts.get("tau", 1.0))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_replay_plain_restatement(variant):
    opts = VARIANTS[variant]
    net = strong_grn("index", seed=3)
    k, c = net.num_levels, net.label_channels
    y = torch.tensor([2, 5, 6])
    null = torch.full_like(y, 10)
    ref, ref_inputs = plain_refine(net, y, k, (c, 8, 8), null, torch.Generator().manual_seed(9), steps=7, **opts)
    rec = Recorder(net)
    res = refine(rec, y, (c, 8, 8), k, num_steps=7, null_class=10, generator=torch.Generator().manual_seed(9),
                 **_refine_kwargs(opts))
    for i, ((z, t, _), (rz, rt, _)) in enumerate(zip(rec.calls, ref_inputs)):
        assert torch.equal(z[:3], rz), f"step {i}: network input differs"
        assert torch.allclose(t[:3], rt, atol=1e-6)
    assert torch.equal(res.labels, ref)


@pytest.mark.parametrize("video", [False, True])
def test_region_regeneration_replays_plain_restatement(video):
    k = 4
    net = EchoNet(k)
    y = torch.tensor([1, 2])
    shape = (3, 5, 4, 4) if video else (3, 6, 6)
    known = torch.randint(0, k, (2, *shape), generator=torch.Generator().manual_seed(1))
    if video:  # image-to-video: every latent frame but the first
        region = torch.ones(1, 1, 5, 1, 1, dtype=torch.bool)
        region[:, :, 0] = False
    else:
        region = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
        region[:, :, 1:5, 2:6] = True
    ref, ref_inputs = plain_refine(net, y, k, shape, torch.full_like(y, 9), torch.Generator().manual_seed(2),
                                   steps=6, known=known, region=region, cfg=2.0, tau=1.1)
    rec = Recorder(net)
    res = refine(rec, y, shape, k, num_steps=6, known=known, region=region, cfg_scale=2.0, temperature=1.1,
                 null_class=9, generator=torch.Generator().manual_seed(2))
    for i, ((z, t, _), (rz, rt, _)) in enumerate(zip(rec.calls, ref_inputs)):
        assert torch.equal(z[:2], rz), f"step {i}: network input differs"
        assert torch.allclose(t[:2], rt, atol=1e-6)
    assert torch.equal(res.labels, ref)
    outside = ~region.expand_as(known)
    assert torch.equal(res.labels[outside], known[outside])
