"""TokenizerLitModule in a real Lightning Trainer: GAN step counting, learning, logging, EMA, checkpoints."""

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from grn.lit_modules.tokenizer import TokenizerLitModule
from grn.models.tokenizer import HBQTokenizer

from tiny_nets import TINY_DISCRIMINATOR as DISCRIMINATOR
from tiny_nets import TINY_TOKENIZER as TOKENIZER
from tiny_nets import quiet_cpu_trainer, smooth_images

STEPS = 20


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
    return quiet_cpu_trainer(steps, **kwargs)


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
        ema_decays=[0.9],
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


# ------------------------------------------------------------------------------------- joint image + video
JOINT_TOKENIZER = {**TOKENIZER, "temporal_downsample": [True]}  # stride 2 in time: clips of 1 + 2k frames
JOINT_STEPS = 4


def joint_batches(n: int) -> list[dict[str, torch.Tensor]]:
    """``n`` joint batches: 3 images ``[3, 3, 24, 24]``, 2 clips ``[2, 3, 3, 16, 16]`` (other sizes on purpose)."""
    images = smooth_images(3 * n, size=24, seed=1)
    # [2n, 3, 3, 16, 16]: 6n frames grouped into 2n clips of 3
    frames = smooth_images(6 * n, size=16, seed=2).unflatten(0, (2 * n, 3)).transpose(1, 2)
    return [{"image": images[3 * i : 3 * i + 3], "video": frames[2 * i : 2 * i + 2]} for i in range(n)]


class RecordOutputGrads:
    """Wraps ``tokenizer.forward``: records, per input kind (image / video), the norm of the gradient that
    reaches each reconstruction."""

    def __init__(self, tokenizer: HBQTokenizer):
        self.forward, self.norms = tokenizer.forward, {"image": [], "video": []}

    def __call__(self, x, **kwargs):
        out = self.forward(x, **kwargs)
        if out[0].requires_grad:
            kind = "image" if x.dim() == 4 else "video"
            out[0].register_hook(lambda g: self.norms[kind].append(g.norm().item()))
        return out


def joint_module(**kwargs) -> TokenizerLitModule:
    torch.manual_seed(0)
    options = {
        "tokenizer": JOINT_TOKENIZER,
        "discriminator": DISCRIMINATOR,
        "lpips": {"allow_random_backbone": True},
        "disc_start": 0,
        "lr": 1e-3,
        "ema_decays": [0.5],
    }
    return TokenizerLitModule(**{**options, **kwargs})


@pytest.fixture(scope="module")
def joint_run():
    module = joint_module(l1_weight=1.0, lpips_weight=0.2, gan_weight=0.005, adaptive_gan_weight=False)
    time_conv = module.tokenizer.encoder.downsamples[0].downsamples[-1].time_conv.weight.detach().clone()
    recorder = module.tokenizer.forward = RecordOutputGrads(module.tokenizer)
    t = trainer(JOINT_STEPS, val_check_interval=JOINT_STEPS, limit_val_batches=1)
    t.fit(
        module,
        train_dataloaders=DataLoader(joint_batches(JOINT_STEPS), batch_size=None),
        val_dataloaders=DataLoader(joint_batches(1), batch_size=None),
    )
    del module.tokenizer.forward
    return {"module": module, "trainer": t, "norms": recorder.norms, "time_conv": time_conv}


def test_joint_batches_train_both_parts(joint_run):
    t, norms, module = joint_run["trainer"], joint_run["norms"], joint_run["module"]
    # both reconstructions get a (non-zero) gradient from the one loss, every step
    assert len(norms["image"]) == len(norms["video"]) == JOINT_STEPS
    assert all(n > 0 for n in norms["image"] + norms["video"])
    # the temporal down-sampling conv only ever sees clips (an image is 1 frame): it moved, so clips trained it
    weight = module.tokenizer.encoder.downsamples[0].downsamples[-1].time_conv.weight
    assert not torch.equal(weight, joint_run["time_conv"])
    metrics = t.callback_metrics
    for key in ("l1", "lpips", "gan_g", "gan_d"):
        for part in ("", "_image", "_video"):
            assert torch.isfinite(metrics[f"train/{key}{part}"]), key + part
    for key in ("val/psnr", "val/psnr_image", "val/psnr_video", "val/l1_image", "val/l1_video"):
        assert torch.isfinite(metrics[key]) and metrics[key] > 0, key


def test_joint_step_counting_is_not_doubled(joint_run):
    t, module = joint_run["trainer"], joint_run["module"]
    assert t.global_step == JOINT_STEPS
    for opt in t.optimizers:
        assert int(next(iter(opt.state.values()))["step"]) == JOINT_STEPS
    assert int(module.ema.num_updates) == JOINT_STEPS


def check_weights_applied(metrics, l1_weight: float, lpips_weight: float) -> None:
    """``train/loss`` = l1_weight·l1 + lpips_weight·lpips + gan_weight·gan_g, each term the mean over parts."""
    for key in ("l1", "lpips", "gan_g", "gan_d"):
        torch.testing.assert_close(
            metrics[f"train/{key}"], (metrics[f"train/{key}_image"] + metrics[f"train/{key}_video"]) / 2
        )
    expected = (
        l1_weight * metrics["train/l1"]
        + lpips_weight * metrics["train/lpips"]
        + metrics["train/gan_weight"] * metrics["train/gan_g"]
    )
    torch.testing.assert_close(metrics["train/loss"], expected)


def test_joint_loss_weights_are_the_configured_ones(joint_run):
    metrics = joint_run["trainer"].callback_metrics
    torch.testing.assert_close(metrics["train/gan_weight"], torch.tensor(0.005))
    check_weights_applied(metrics, 1.0, 0.2)


def test_other_weights_and_adaptive_gan_weight():
    module = joint_module(l1_weight=2.0, lpips_weight=1.0, gan_weight=0.3, adaptive_gan_weight=True)
    t = trainer(1, limit_val_batches=0)
    t.fit(module, train_dataloaders=DataLoader(joint_batches(1), batch_size=None))
    metrics = t.callback_metrics
    assert metrics["train/gan_weight"] > 0 and not torch.isclose(
        metrics["train/gan_weight"], torch.tensor(0.3)
    )
    check_weights_applied(metrics, 2.0, 1.0)


def test_batches_without_pixels_are_a_clear_error():
    with pytest.raises(KeyError, match="'image' and/or 'video' pixels"):
        TokenizerLitModule._parts({"label": torch.zeros(2)})


@pytest.mark.parametrize(
    "experiment, weights, params",
    [
        ("tokenizer_joint_f16t4d64", (1.0, 0.2, 0.005), 705_693_036),
        ("tokenizer_image_f16d16", (1.0, 1.0, 0.3), 702_687_612),
    ],
)
def test_full_size_tokenizer_experiments_instantiate_on_meta(compose_cfg, experiment, weights, params):
    # the real configs need the VGG weights for LPIPS; the stand-in keeps this test offline
    cfg = compose_cfg(
        "train", [f"experiment={experiment}", "stages.tokenizer.lit_module.lpips.allow_random_backbone=true"]
    )
    with torch.device("meta"):
        module = instantiate(cfg.stages.tokenizer.lit_module)
    hp = module.hparams
    assert (hp.l1_weight, hp.lpips_weight, hp.gan_weight) == weights
    assert sum(p.numel() for p in module.tokenizer.parameters()) == params
    assert module.tokenizer.temporal_stride == 4 and module.tokenizer.spatial_stride == 16


def test_tiny_joint_experiment_trains_on_real_data(compose_cfg):
    cfg = compose_cfg(
        "train",
        [
            "experiment=tokenizer_tiny_joint",
            "data.photos.crop_size=16",
            "data.photos.batch_size=2",
            "data.gif.crop_size=16",
            "data.gif.batch_size=1",
            "model.tokenizer.enc_channels=8",
            "model.tokenizer.dec_channels=8",
            "stages.tokenizer.lit_module.disc_start=0",
            "stages.tokenizer.lit_module.lpips.net=vgg",  # AlexNet's stride needs >= 32-pixel frames
        ],
    )
    datamodule = instantiate(cfg.stages.tokenizer.datamodule)
    module = instantiate(cfg.stages.tokenizer.lit_module)
    t = trainer(2, limit_val_batches=1, val_check_interval=2)
    t.fit(module, datamodule=datamodule)
    metrics = t.callback_metrics
    assert t.global_step == 2 and torch.isfinite(metrics["train/loss"])
    assert {"train/l1_image", "train/l1_video", "train/gan_d", "val/psnr_video"} <= set(metrics)
    check_weights_applied(metrics, 1.0, 0.2)
