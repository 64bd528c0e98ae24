"""The C2I sampling entry (grn.sampling.entry): index labels for both targets, the trained bit target, torch.compile
and bf16 (moved from tests/lit_modules/test_generator_module.py with their asserts)."""

import pytest
import torch
from hydra.utils import instantiate

from tiny_nets import tiny_generator_config

NET = tiny_generator_config(2, 2, 3, 4)


class Module:
    """What these tests read of a module: its network (as GeneratorLitModule builds it from the config)."""

    def __init__(self, net):
        self.net = net


def test_sample_labels_returns_index_labels_for_both_targets():
    from grn.sampling.entry import sample_labels

    for target in ("index", "bits"):
        torch.manual_seed(0)
        module = Module(instantiate({**NET, "target": target}))
        y = torch.tensor([0, 2, 1])
        res = sample_labels(module.net, y, torch.Generator().manual_seed(0), num_steps=3, cfg_scale=2.0)
        assert res.labels.shape == (3, 2, 4, 4)  # index layout [B, d, h, w] whatever the network predicts
        assert res.labels.min() >= 0 and res.labels.max() < 4
        again = sample_labels(module.net, y, torch.Generator().manual_seed(0), num_steps=3, cfg_scale=2.0)
        assert torch.equal(res.labels, again.labels)
        assert module.net.training  # sampling restores the mode it found


def test_bit_target_is_validated():
    from grn.sampling.entry import sample_labels
    from grn.models.generator import build_generator

    with pytest.raises(ValueError, match="needs target='bits'"):
        build_generator(**{k: v for k, v in NET.items() if k != "_target_"}, bit_target="relative")
    net = build_generator(**{k: v for k, v in NET.items() if k != "_target_"}, target="bits", bit_target="relative")
    with pytest.raises(ValueError, match="trained with bit_target='relative'"):
        sample_labels(net, torch.tensor([0]), num_steps=2, bit_target="absolute")
    res = sample_labels(net, torch.tensor([0, 1]), torch.Generator().manual_seed(0), num_steps=2, bit_target=None)
    assert res.labels.shape == (2, 2, 4, 4)


def input_following_net(target: str):
    """The tiny network (seed 0) in eval mode with its zero-initialised adaLN and output layers drawn at random, so
    that its logits depend on the input map."""
    torch.manual_seed(0)
    net = instantiate({**NET, "target": target}).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "adaLN" in name or "final_layer" in name:
                p.normal_(0, 0.05)
    return net


@pytest.mark.slow  # torch.compile builds C++ kernels with the system compiler (~19 s on 2 cores)
def test_compiled_sampling_matches_eager():
    """sampler.compile=true: the network runs through torch.compile (compiled once, kept on the network; the RoPE
    takes its real-valued form there) and gives the eager logits and samples."""
    from grn.sampling.entry import compiled_forward, sample_labels

    net = input_following_net("index")
    # one batch shape throughout (3 samples, guided at every step: 6 rows), so one compilation
    z = torch.randint(0, 4, (6, 2, 4, 4))
    t, y = torch.rand(6), torch.tensor([0, 2, 1, 3, 3, 3])  # 3 = the unconditional class
    fn = compiled_forward(net)
    assert compiled_forward(net) is fn  # built once
    with torch.no_grad():
        torch.testing.assert_close(fn(z, t, y), net(z, t, y), atol=1e-5, rtol=1e-5)
    y = y[:3]
    opts = dict(num_steps=4, cfg_scale=2.0, cfg_interval=[0.0, 1.0], temperature=1.0)
    eager = sample_labels(net, y, torch.Generator().manual_seed(0), **opts)
    compiled = sample_labels(net, y, torch.Generator().manual_seed(0), compile=True, **opts)
    # exact although inductor reorders the float32 arithmetic: the smallest Gumbel top-2 gap of these draws
    # (2.4e-4, measured) exceeds twice the guided-logit tolerance asserted above ((1 + 2·2)·1.1e-5 ≈ 6e-5)
    assert torch.equal(eager.labels, compiled.labels)


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_bf16_sampling_gives_valid_reproducible_labels(precision, monkeypatch):
    """sampler.precision=bf16 (or auto on a CPU with native bf16): the network's matmuls run in bf16 under autocast,
    its logits stay fp32, and the labels are valid index labels of the fp32 shape, the same for the same seed."""
    from grn import precision as P
    from grn.sampling.entry import sample_labels

    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "avx512_bf16"})  # what auto reads on this "CPU"
    net = input_following_net("bits")
    seen: dict[str, set] = {"qkv": set(), "logits": set()}
    net.blocks[0].attn.qkv.register_forward_hook(lambda m, i, out: seen["qkv"].add(out.dtype))
    net.final_layer.register_forward_hook(lambda m, i, out: seen["logits"].add(out.dtype))
    y = torch.tensor([0, 2, 1, 1])
    opts = dict(num_steps=4, cfg_scale=2.0, cfg_interval=[0.0, 1.0], temperature=1.0)
    fp32 = sample_labels(net, y, torch.Generator().manual_seed(0), **opts)
    assert seen == {"qkv": {torch.float32}, "logits": {torch.float32}}  # the default is fp32
    seen["qkv"].clear()
    low = sample_labels(net, y, torch.Generator().manual_seed(0), precision=precision, **opts)
    assert seen == {"qkv": {torch.bfloat16}, "logits": {torch.float32}}
    again = sample_labels(net, y, torch.Generator().manual_seed(0), precision=precision, **opts)
    assert low.labels.shape == fp32.labels.shape == (4, 2, 4, 4) and low.labels.dtype == torch.int64
    assert low.labels.min() >= 0 and low.labels.max() < 4  # index labels of M = 2 (converted from bits)
    assert torch.equal(low.labels, again.labels)
    assert torch.isfinite(low.stats["entropy"]).all()
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2"})  # a CPU without native bf16: auto is fp32
    seen["qkv"].clear()
    sample_labels(net, y, torch.Generator().manual_seed(0), precision="auto", **opts)
    assert seen["qkv"] == {torch.float32}
