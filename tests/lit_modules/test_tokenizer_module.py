"""TokenizerLitModule in a real Lightning Trainer: GAN step counting, learning, logging, EMA, checkpoints."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from grn.lit_modules.tokenizer import TokenizerLitModule
from grn.models.tokenizer import HBQTokenizer

TOKENIZER = {
    "_target_": "grn.models.tokenizer.HBQTokenizer",
    "latent_dim": 4,
    "hbq_rounds": 4,
    "enc_channels": 8,
    "dec_channels": 8,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
}
DISCRIMINATOR = {
    "_target_": "grn.models.discriminator.PatchDiscriminator",
    "base_channels": 8,
    "num_layers": 2,
}
STEPS = 20


def smooth_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Low-frequency colour images in [-1, 1], ``[n, 3, size, size]`` (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


class RepeatedBatch(Dataset):
    """The same 4 images over and over, as ``{"image", "label"}`` dicts (one epoch = ``repeats`` batches)."""

    def __init__(self, repeats: int):
        self.images = smooth_images(4)
        self.repeats = repeats

    def __len__(self) -> int:
        return 4 * self.repeats

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i % 4], "label": torch.tensor(i % 4)}


def loader(repeats: int) -> DataLoader:
    return DataLoader(RepeatedBatch(repeats), batch_size=4, shuffle=False)


def trainer(steps: int, **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(max_steps=steps, **{**options, **kwargs})


@torch.no_grad()
def recon_l1(tok: HBQTokenizer) -> float:
    x = smooth_images(4)
    was_training = tok.training
    tok.eval()
    err = (tok(x)[0] - x).abs().mean().item()
    tok.train(was_training)
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One GAN run from step 0 (both optimisers every step), validated at the end and checkpointed."""
    torch.manual_seed(0)
    module = TokenizerLitModule(
        tokenizer=TOKENIZER,
        discriminator=DISCRIMINATOR,
        lpips={"allow_random_backbone": True},
        gan_weight=0.1,
        disc_start=0,
        lr=2e-3,
        ema_decay=0.9,
    )
    before = recon_l1(module.tokenizer)
    disc_before = [p.detach().clone() for p in module.discriminator.parameters()]
    clipped = []  # which optimiser each gradient clipping was for
    clip = module.clip_gradients
    module.clip_gradients = lambda opt, **kw: (clipped.append(opt), clip(opt, **kw))
    t = trainer(STEPS, val_check_interval=STEPS, limit_val_batches=1)
    t.fit(module, train_dataloaders=loader(STEPS), val_dataloaders=loader(1))
    del module.clip_gradients
    ckpt = tmp_path_factory.mktemp("ckpt") / "tok.ckpt"
    t.save_checkpoint(ckpt, weights_only=False)
    return {
        "module": module,
        "trainer": t,
        "before": before,
        "after": recon_l1(module.tokenizer),
        "disc_before": disc_before,
        "clipped": clipped,
        "ckpt": ckpt,
    }


def test_global_step_counts_generator_steps_only(run):
    module, t = run["module"], run["trainer"]
    assert t.global_step == STEPS  # not 2 * STEPS although two optimisers stepped every batch
    for opt in t.optimizers:  # the raw torch optimisers: AdamW counts its own steps
        first = next(iter(opt.state.values()))
        assert int(first["step"]) == STEPS
        assert sum(o is opt for o in run["clipped"]) == STEPS  # both are clipped, once per step
    assert int(module.ema.num_updates) == STEPS
    changed = [
        not torch.equal(a, b)
        for a, b in zip(run["disc_before"], module.discriminator.parameters(), strict=True)
    ]
    assert all(changed)


def test_reconstruction_improves(run):
    assert run["after"] < 0.85 * run["before"], (run["before"], run["after"])


def test_logged_metrics(run):
    metrics = run["trainer"].callback_metrics
    for key in ("train/l1", "train/lpips", "train/gan_g", "train/gan_d", "train/gan_weight", "train/loss"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert metrics["train/gan_weight"] > 0
    assert metrics["val/psnr"] > 0 and 0 < metrics["val/l1"] < 2


def test_frozen_parts_stay_out_of_ema_and_optimisers(run):
    module = run["module"]
    assert all(not p.requires_grad for p in module.lpips.parameters())
    assert set(module.ema.names) == {n for n, _ in module.tokenizer.named_parameters()}
    tokenizer_ids = {id(p) for p in module.tokenizer.parameters()}
    g_params = {id(p) for group in run["trainer"].optimizers[0].param_groups for p in group["params"]}
    assert g_params == tokenizer_ids


def test_checkpoint_round_trip(run):
    module, path = run["module"], run["ckpt"]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert not any(k.startswith("lpips.") for k in ckpt["state_dict"])  # frozen LPIPS is rebuilt, not stored
    assert ckpt["hyper_parameters"]["tokenizer"] == TOKENIZER
    assert len(ckpt["optimizer_states"]) == 2

    ema_tok = TokenizerLitModule.load_tokenizer(path)
    live_tok = TokenizerLitModule.load_tokenizer(path, use_ema=False)
    assert isinstance(ema_tok, HBQTokenizer) and not ema_tok.training
    expected_ema = module.ema_tokenizer().state_dict()
    for key, value in ema_tok.state_dict().items():
        torch.testing.assert_close(value, expected_ema[key], atol=0, rtol=0)
    for key, value in live_tok.state_dict().items():
        torch.testing.assert_close(value, module.tokenizer.state_dict()[key], atol=0, rtol=0)
    assert any(
        not torch.equal(a, b) for a, b in zip(ema_tok.parameters(), live_tok.parameters(), strict=True)
    )

    restored = TokenizerLitModule.load_from_checkpoint(path)  # strict load, LPIPS refilled from its config
    torch.testing.assert_close(restored.ema.state_dict(), module.ema.state_dict())


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        TokenizerLitModule.load_tokenizer(tmp_path / "nope.ckpt")
    assert "nope.ckpt" in str(err.value) and "\n" not in str(err.value)


def test_gan_waits_for_disc_start_and_configs_become_plain():
    torch.manual_seed(0)
    module = TokenizerLitModule(
        tokenizer=OmegaConf.create(TOKENIZER),
        discriminator=OmegaConf.create(DISCRIMINATOR),
        lpips_weight=0.0,  # no LPIPS net is built at all
        disc_start=100,
        lr=1e-3,
    )
    assert module.lpips is None
    assert type(module.hparams.tokenizer) is dict and module.hparams.tokenizer["channel_mult"] == [1, 2]
    disc_before = [p.detach().clone() for p in module.discriminator.parameters()]
    t = trainer(2, limit_val_batches=0)
    t.fit(module, train_dataloaders=loader(2))
    assert t.global_step == 2
    assert all(torch.equal(a, b) for a, b in zip(disc_before, module.discriminator.parameters(), strict=True))
    assert "train/gan_d" not in t.callback_metrics and "train/lpips" not in t.callback_metrics
    assert t.callback_metrics["train/gan_weight"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("find_unused", [False, True])
def test_ddp_two_cpu_ranks(find_unused):
    """Two CPU ranks under DDP (gloo) train; without find_unused_parameters a one-line error says why."""
    from lightning.pytorch.strategies import DDPStrategy

    torch.manual_seed(0)
    module = TokenizerLitModule(
        tokenizer=TOKENIZER, discriminator=DISCRIMINATOR, lpips={"allow_random_backbone": True}, lr=1e-3
    )
    strategy = DDPStrategy(
        start_method="spawn", process_group_backend="gloo", find_unused_parameters=find_unused
    )
    t = trainer(2, devices=2, strategy=strategy, limit_val_batches=0)
    # spawned ranks unpickle the loader, and test modules are not importable there: a plain list of dicts is
    samples = [{"image": image, "label": torch.tensor(i)} for i, image in enumerate(smooth_images(8))]
    data = DataLoader(samples, batch_size=2)
    if not find_unused:
        with pytest.raises(Exception, match="find_unused_parameters=True"):
            t.fit(module, train_dataloaders=data)
        return
    t.fit(module, train_dataloaders=data)
    # spawn returns rank 0's weights and metrics (not its loop state): the EMA counted 2 generator steps
    assert int(module.ema.num_updates) == 2
    assert torch.isfinite(t.callback_metrics["train/gan_d"])
