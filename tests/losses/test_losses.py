"""Tokenizer losses: LPIPS (offline loading, stand-in), hinge GAN losses, adaptive weight, PatchGAN shapes."""

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import grn.losses.perceptual as perceptual
from grn.losses.adversarial import adaptive_weight, generator_adv_loss, hinge_d_loss
from grn.losses.perceptual import VGG16_FILENAME, build_lpips, default_vgg_weights_path
from grn.models.discriminator import PatchDiscriminator


@pytest.fixture(scope="module")
def stand_in():
    return build_lpips(allow_random_backbone=True)


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1


# ------------------------------------------------------------------------------------------------- LPIPS
def test_missing_vgg_weights_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / VGG16_FILENAME
    assert default_vgg_weights_path() == expected
    with pytest.raises(FileNotFoundError) as err:
        build_lpips()
    msg = str(err.value)
    assert "\n" not in msg
    assert VGG16_FILENAME in msg and str(expected) in msg and "allow_random_backbone" in msg
    with pytest.raises(FileNotFoundError, match="elsewhere.pth"):
        build_lpips(backbone_weights=tmp_path / "elsewhere.pth")


def test_stand_in_is_frozen_deterministic_and_warns(stand_in, caplog, monkeypatch):
    assert stand_in.stand_in
    assert all(not p.requires_grad for p in stand_in.parameters())
    # no dropout / batch norm left: a parent's .train() cannot change the metric
    mode_dependent = (nn.Dropout, nn.modules.batchnorm._BatchNorm)
    assert not any(isinstance(m, mode_dependent) for m in stand_in.modules())
    x, y = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=1)
    torch.testing.assert_close(stand_in.train()(x, y), stand_in.eval()(x, y))
    monkeypatch.setattr(perceptual, "_warned_stand_in", False)
    with caplog.at_level(logging.WARNING, logger="grn.losses.perceptual"):
        again = build_lpips(allow_random_backbone=True)
        build_lpips(allow_random_backbone=True)
    warnings = [r for r in caplog.records if "RANDOM VGG16" in r.getMessage()]
    assert len(warnings) == 1  # once, not per build
    for a, b in zip(stand_in.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # fixed seed


def test_stand_in_uses_packaged_lpips_heads(stand_in):
    import lpips

    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    state = torch.load(heads, map_location="cpu", weights_only=True)
    assert torch.equal(stand_in.net.lin0.model[1].weight, state["lin0.model.1.weight"])


def test_stand_in_distance_values(stand_in):
    x, y = images(3, 3, 16, 16), images(3, 3, 16, 16, seed=1)
    same = stand_in(x, x)
    diff = stand_in(x, y)
    assert same.shape == diff.shape == (3,)
    assert torch.allclose(same, torch.zeros(3), atol=1e-6)
    assert (diff > 0).all()
    video = torch.stack([x, y], dim=2)  # [B, 3, T=2, H, W]
    dv = stand_in(video, torch.stack([y, y], dim=2))
    assert dv.shape == (3, 2)
    torch.testing.assert_close(dv[:, 0], diff)
    assert torch.allclose(dv[:, 1], torch.zeros(3), atol=1e-6)


def test_gradient_flows_to_inputs(stand_in):
    x = images(2, 3, 16, 16).requires_grad_(True)
    stand_in(x, images(2, 3, 16, 16, seed=1)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_real_mode_loads_torchvision_vgg_layout(stand_in, tmp_path):
    """A file in torchvision's ``features.{i}.*`` layout lands in lpips' ``slice{k}.{i}.*`` trunk."""
    fake = {}
    for key, value in stand_in.net.net.state_dict().items():
        _, index, param = key.split(".")
        fake[f"features.{index}.{param}"] = value + 1.0
    fake["classifier.0.weight"] = torch.zeros(2, 2)  # the real file also holds the classifier; it is ignored
    path = tmp_path / VGG16_FILENAME
    torch.save(fake, path)
    real = build_lpips(backbone_weights=path)
    assert not real.stand_in
    loaded = real.net.net.state_dict()
    for key, value in stand_in.net.net.state_dict().items():
        torch.testing.assert_close(loaded[key], value + 1.0)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        build_lpips(backbone_weights=tmp_path / "bad.pth")


# ------------------------------------------------------------------------------------------- GAN losses
def test_hinge_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = [0, 0.5, 2] → mean 2.5/3
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + f) = [0, 1, 2]   → mean 1
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 1.0)))
    assert hinge_d_loss(torch.full((4,), 5.0), torch.full((4,), -5.0)) == 0  # confident and right: no loss
    torch.testing.assert_close(generator_adv_loss(fake), torch.tensor(1.0 / 3))
    assert hinge_d_loss(real, fake).dim() == generator_adv_loss(fake).dim() == 0


def test_adaptive_weight_is_gradient_norm_ratio():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    out = layer(torch.randn(5, 4))
    nll = out.pow(2).mean()
    g = -out.mean()
    w = adaptive_weight(nll, g, layer.weight)
    (gn,) = torch.autograd.grad(nll, layer.weight, retain_graph=True)
    (gg,) = torch.autograd.grad(g, layer.weight, retain_graph=True)
    assert w.dim() == 0 and not w.requires_grad and w > 0
    torch.testing.assert_close(w, gn.norm() / (gg.norm() + 1e-4))
    # the graph survives for the real backward, and the clamp holds
    (nll + w * g).backward()
    assert layer.weight.grad is not None
    out = layer(torch.randn(5, 4))
    assert adaptive_weight(out.pow(2).mean() * 1e9, -out.mean(), layer.weight, max_weight=10.0) == 10.0


def test_adaptive_weight_without_graph_is_one():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        out = layer(torch.randn(2, 4))
        assert adaptive_weight(out.mean(), -out.mean(), layer.weight) == 1.0


# --------------------------------------------------------------------------------------- discriminator
@pytest.mark.parametrize(("num_layers", "size", "patches"), [(2, 16, 2), (3, 32, 2), (3, 256, 30)])
def test_patch_discriminator_shapes(num_layers, size, patches):
    d = PatchDiscriminator(base_channels=4, num_layers=num_layers)
    assert d(images(1, 3, size, size)).shape == (1, 1, patches, patches)


def test_patch_discriminator_is_per_sample_and_validates():
    d = PatchDiscriminator(base_channels=8, num_layers=2).eval()
    x = images(4, 3, 16, 16)
    torch.testing.assert_close(d(x)[:1], d(x[:1]), atol=1e-5, rtol=1e-5)  # no batch statistics
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    assert not any(isinstance(m, nn.GroupNorm) for m in PatchDiscriminator(norm="none").modules())
    with pytest.raises(ValueError, match="too small"):
        d(images(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        d(images(1, 3, 2, 16, 16))


def test_stand_ins_are_equal_but_independent_copies(stand_in):
    other = build_lpips(allow_random_backbone=True)
    for a, b in zip(stand_in.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # editing one copy leaves the next build untouched
    third = build_lpips(allow_random_backbone=True)
    assert torch.equal(next(third.parameters()), next(stand_in.parameters()))
