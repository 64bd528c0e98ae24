"""GRN network: exact sizes, the embedding lookup equals the official one-hot formulation, output layout."""

import pytest
import torch
import torch.nn.functional as F

from grn.models.generator import build_generator

# trainable / total parameters for GRN_ind (in=256) and GRN_bit (in=128), facts §3.2
PAPER_SIZES = {
    "grn_b": ((130_664_448, 130_861_056), (130_549_632, 130_746_240)),
    "grn_l": ((458_287_328, 458_549_472), (458_139_744, 458_401_888)),
    "grn_h": ((951_727_424, 952_055_104), (951_530_688, 951_858_368)),
    "grn_g": ((2_006_146_448, 2_006_572_432), (2_005_900_560, 2_006_326_544)),
}


@pytest.mark.parametrize("size", sorted(PAPER_SIZES))
def test_paper_parameter_counts(size):
    for target, (trainable, total) in zip(("index", "bits"), PAPER_SIZES[size]):
        with torch.device("meta"):
            net = build_generator(size, latent_dim=16, hbq_rounds=4, target=target, num_classes=1000, input_size=16)
        n = sum(p.numel() for p in net.parameters() if p.requires_grad)
        assert n == trainable
        assert n + net.pos_embed.numel() == total


def tiny(target="index", **kw):
    torch.manual_seed(0)
    return build_generator("tiny", latent_dim=4, hbq_rounds=3, target=target, num_classes=10, input_size=8, **kw)


@pytest.mark.parametrize("target", ["index", "bits"])
def test_embedding_lookup_equals_one_hot_conv(target):
    net = tiny(target)
    k, c = net.num_levels, net.label_channels
    labels = torch.randint(0, k, (3, c, 8, 8))
    ours = net.x_embedder(labels)
    one_hot = F.one_hot(labels, k).permute(0, 4, 1, 2, 3).reshape(3, k * c, 8, 8).float()  # class-major k·C + c
    ref = net.x_embedder.proj2(net.x_embedder.proj1(one_hot)).flatten(2).transpose(1, 2)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_output_layout_and_initial_loss():
    for target, k in (("index", 8), ("bits", 2)):
        net = tiny(target)
        labels = torch.randint(0, k, (2, net.label_channels, 8, 8))
        logits = net(labels, torch.rand(2), torch.tensor([1, 10]))
        assert logits.shape == (2, k, net.label_channels, 8, 8)
        # adaLN-Zero + zero head: uniform logits, loss ln K
        assert F.cross_entropy(logits, labels).item() == pytest.approx(torch.log(torch.tensor(float(k))).item())


def test_class_and_time_conditioning_reach_the_output():
    net = tiny()
    for p in net.parameters():  # leave the zero init so the conditioning paths are live
        torch.nn.init.normal_(p, std=0.05)
    labels = torch.randint(0, 8, (1, 4, 8, 8))
    base = net(labels, torch.tensor([0.5]), torch.tensor([3]))
    assert not torch.allclose(base, net(labels, torch.tensor([0.5]), torch.tensor([4])))
    assert not torch.allclose(base, net(labels, torch.tensor([0.9]), torch.tensor([3])))


def test_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects labels \[B, 4, 8, 8\]"):
        tiny()(torch.zeros(1, 4, 16, 16, dtype=torch.long), torch.rand(1), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown generator size"):
        build_generator("huge", latent_dim=4, hbq_rounds=4)


def test_flash_backend_is_a_clear_error_without_the_package():
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ImportError, match="pip install 'grn\\[gpu\\]'"):
            tiny(attn_backend="flash")
    else:  # with the package, the CPU path still runs (SDPA fallback) and agrees with sdpa
        a, b = tiny(attn_backend="flash"), tiny()
        x, t, y = torch.randint(0, 8, (1, 4, 8, 8)), torch.tensor([0.3]), torch.zeros(1, dtype=torch.long)
        assert torch.equal(a(x, t, y), b(x, t, y))
    with pytest.raises(ValueError, match="unknown attention backend"):
        tiny(attn_backend="xformers")
