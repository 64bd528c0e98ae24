"""GeneratorLitModule: the objective, a few optimisation steps on a fixed batch, EMA, checkpoint reload."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from grn.checkpoints import load_generator
from grn.datamodules.tokens import TensorDictDataset
from grn.lit_modules.generator import GeneratorLitModule

from tiny_nets import tiny_generator_config

NET = tiny_generator_config(2, 2, 3, 4)


def make_batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    # class-dependent token maps, so the loss can fall
    tokens = (y.view(-1, 1, 1, 1) + torch.randint(0, 2, (n, 2, 4, 4), generator=g)) % 4
    return {"tokens": tokens, "label": y}


@pytest.mark.parametrize("target", ["index", "bits", "bits-relative"])
def test_steps_lower_loss_on_fixed_batch(target):
    torch.manual_seed(0)
    net = {**NET, "target": target.split("-")[0]}
    if target.endswith("relative"):
        net["bit_target"] = "relative"
    module = GeneratorLitModule(net=net, lr=3e-3, ema_decays=[0.9], label_drop_prob=0.0)
    batch = make_batch()
    g = lambda: torch.Generator().manual_seed(123)  # noqa: E731 — the same noise draw before and after
    with torch.no_grad():
        before = module.objective(batch, generator=g(), drop_labels=False)[0].item()
    opt = torch.optim.AdamW(module.net.parameters(), lr=3e-3)
    # flips depend on the input as well as the class, so the relative target needs more steps to show progress
    for _ in range(40 if target.endswith("relative") else 15):
        loss = module.objective(batch)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = module.objective(batch, generator=g(), drop_labels=False)[0].item()
    assert after < before - 0.05


def test_trainer_fit_updates_ema_and_reloads(tmp_path):
    torch.manual_seed(0)
    data = TensorDictDataset(**make_batch(32))
    module = GeneratorLitModule(net=NET, lr=1e-3, ema_decays=[0.5, 0.9], lr_scheduler={
        "_target_": "grn.lit_modules.optim.warmup_constant", "_partial_": True, "warmup_steps": 2})
    trainer = L.Trainer(
        max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=8, shuffle=True))
    assert trainer.global_step == 6
    assert int(module.emas["ema1"].num_updates) == 6
    live = dict(module.net.named_parameters())
    shadow = module.emas["ema1"].state_dict_for(module.net)
    assert not torch.allclose(live["blocks.0.attn.qkv.weight"], shadow["blocks.0.attn.qkv.weight"])
    path = tmp_path / "g.ckpt"
    trainer.save_checkpoint(path)
    net, hp = load_generator(path, ema="ema1")
    assert hp["net"]["size"] == "tiny"
    assert torch.equal(net.state_dict()["blocks.0.attn.qkv.weight"], shadow["blocks.0.attn.qkv.weight"])
    live_net, _ = load_generator(path, ema=None)
    assert torch.equal(live_net.state_dict()["blocks.0.attn.qkv.weight"], live["blocks.0.attn.qkv.weight"])
    with pytest.raises(KeyError, match="ema7"):
        load_generator(path, ema="ema7")
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "missing.ckpt")


def test_lr_scales_with_global_batch():
    module = GeneratorLitModule(net=NET, blr=5e-5)

    class FakeTrainer:
        world_size, accumulate_grad_batches = 4, 2

        class datamodule:  # noqa: N801
            batch_size = 32

    module._trainer = FakeTrainer()  # only what learning_rate() reads
    assert module.learning_rate() == pytest.approx(5e-5 * 256 / 256)


def test_relative_bit_objective_targets_the_flips():
    """App. E.3: with relative targets the cross-entropy is taken against ``input XOR real bits``."""
    from grn import hbq

    torch.manual_seed(0)
    module = GeneratorLitModule(net={**NET, "target": "bits", "bit_target": "relative"}, label_drop_prob=0.0)
    seen = {}
    forward = module.net.forward

    def spy(z, t, y):
        seen["z"] = z
        seen["logits"] = forward(z, t, y)
        return seen["logits"]

    module.net.forward = spy
    with torch.no_grad():  # the output layer starts at zero (all logits 0); give it weights so targets matter
        for p in module.net.final_layer.parameters():
            p.normal_(0, 0.5)
    batch = make_batch(8)
    loss = module.objective(batch, generator=torch.Generator().manual_seed(5), drop_labels=False)[0]
    bits = hbq.index_labels_to_bit_labels(batch["tokens"], 2)
    flips = bits ^ seen["z"]
    assert flips.any() and not flips.all()
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(seen["logits"], flips).item(), rel=1e-6)
    assert loss.item() != pytest.approx(torch.nn.functional.cross_entropy(seen["logits"], bits).item(), rel=1e-3)
