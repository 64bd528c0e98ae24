"""bf16 autocast training on a GPU (Lightning ``precision="bf16-mixed"``, what ``trainer=gpu`` uses): the GAN
tokenizer (manual optimisation, two optimisers) and the generator train — the matmuls run in bf16, every gradient
is finite, the parameters move and the loss falls."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from grn.datamodules.tokens import TensorDictDataset
from grn.lit_modules.generator import GeneratorLitModule
from grn.lit_modules.tokenizer import TokenizerLitModule

from tiny_nets import TINY_DISCRIMINATOR, TINY_TOKENIZER, smooth_images, tiny_generator_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")]


class GradientCheck(L.Callback):
    """Records, before every optimiser step, whether all gradients of the stepped parameters are finite, and, on
    entry to ``network``'s forward, the autocast dtype in force (None where autocast is off)."""

    def __init__(self, network: torch.nn.Module, device: str):
        self.finite: list[bool] = []
        self.autocast: set[torch.dtype | None] = set()

        def record(mod, inputs) -> None:
            on = torch.is_autocast_enabled(device)
            self.autocast.add(torch.get_autocast_dtype(device) if on else None)

        network.register_forward_pre_hook(record)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.finite.append(bool(grads) and all(torch.isfinite(g).all() for g in grads))


def fit(module: L.LightningModule, data, steps: int, check: GradientCheck, accelerator: str = "gpu") -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, accelerator=accelerator, devices=1, precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[check], limit_val_batches=0)
    trainer.fit(module, DataLoader(data, batch_size=8, shuffle=False))
    return trainer


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def tokenizer_step(accelerator: str = "gpu") -> None:
    """20 GAN steps: reconstruction L1 on the training images falls by a sixth or more (fp32 on CPU: 0.85x in
    tests/lit_modules/test_tokenizer_module.py at the same settings)."""
    torch.manual_seed(0)
    module = TokenizerLitModule(tokenizer=TINY_TOKENIZER, discriminator=TINY_DISCRIMINATOR,
                                lpips={"allow_random_backbone": True}, gan_weight=0.1, disc_start=0, lr=2e-3,
                                ema_decays=[0.9])
    images = smooth_images(8)
    device = "cuda" if accelerator == "gpu" else "cpu"

    def l1() -> float:
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            tok = module.tokenizer.to(device).eval()
            err = (tok(images.to(device))[0].float() - images.to(device)).abs().mean().item()
            tok.train()
        return err

    before, start = l1(), snapshot(module.tokenizer)
    disc_start = snapshot(module.discriminator)
    check = GradientCheck(module.tokenizer, device)
    trainer = fit(module, TensorDictDataset(image=images, label=torch.arange(8)), 20, check, accelerator)
    assert trainer.global_step == 20
    assert check.autocast == {torch.bfloat16}  # every training forward ran under bf16 autocast
    assert len(check.finite) == 40 and all(check.finite)  # two optimisers, every step
    assert all(torch.isfinite(v).all() for v in trainer.callback_metrics.values())
    assert all(not torch.equal(v, module.tokenizer.state_dict()[k].to(v.device)) for k, v in start.items())
    assert any(not torch.equal(v, p.to(v.device)) for (k, v), p in
               zip(disc_start.items(), module.discriminator.parameters(), strict=True))
    after = l1()
    assert after < 0.85 * before, (before, after)


def generator_step(accelerator: str = "gpu") -> None:
    """30 steps on class-dependent token maps: the objective at a fixed noise draw falls by more than 0.05 nats."""
    torch.manual_seed(0)
    module = GeneratorLitModule(net=tiny_generator_config(2, 2, 3, 4), lr=3e-3, ema_decays=[0.9],
                                label_drop_prob=0.0)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(32) % 3
    tokens = (y.view(-1, 1, 1, 1) + torch.randint(0, 2, (32, 2, 4, 4), generator=g)) % 4
    device = "cuda" if accelerator == "gpu" else "cpu"

    def loss() -> float:
        batch = {"tokens": tokens.to(device), "label": y.to(device)}
        noise = torch.Generator(device=device).manual_seed(123)  # the same noise draw before and after
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            return module.to(device).objective(batch, generator=noise, drop_labels=False)[0].item()

    before, start = loss(), snapshot(module.net)
    check = GradientCheck(module.net, device)
    trainer = fit(module, TensorDictDataset(tokens=tokens, label=y), 30, check, accelerator)
    assert trainer.global_step == 30
    assert check.autocast == {torch.bfloat16}
    assert len(check.finite) == 30 and all(check.finite)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    moved = [k for k, v in start.items() if not torch.equal(v, dict(module.net.named_parameters())[k].to(v.device))]
    assert len(moved) == len(start)
    after = loss()
    assert after < before - 0.05, (before, after)


def test_tokenizer_trains_under_bf16_autocast():
    tokenizer_step()


def test_generator_trains_under_bf16_autocast():
    generator_step()
