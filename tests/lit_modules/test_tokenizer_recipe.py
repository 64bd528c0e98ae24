"""The released tokenizer recipe (conf/recipe/tokenizer_official.yaml, experiment=tokenizer_official_*): every
hyper-parameter against the facts (reference/official_update.md D1-D7), and a few CPU training steps."""

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from grn.lit_modules.optim import decay_groups
from grn.models.discriminator import PatchDiscriminator, to_sync_batch_norm
from grn.models.ema import EMA
from grn.models.tokenizer import HBQTokenizer

from tiny_nets import TINY_TOKENIZER, quiet_cpu_trainer

# The released recipe, from the facts (official_update.md §D).
FACTS = {
    "l1_weight": 1.0,  # D3 --l1_weight 1
    "lpips_weight": 1.0,  # D3 --perceptual_weight 1 (video: the same, per frame, D1)
    "gan_weight": 0.3,  # D3 --image_gan_weight 0.3
    "disc_weight": 1.0,  # D3 --image_disc_weight 1.0
    "disc_start": 0,  # D1: no disc_start gating
    "adaptive_gan_weight": False,  # D1: no adaptive weight
    "lr": 1e-4,  # D5: train.py default (the script passes 1e-5)
    "disc_lr": None,  # D5: lr · dis_lr_multiplier 1
    "optimizer._target_": "torch.optim.AdamW",  # D5
    "optimizer.betas": [0.9, 0.95],  # D5
    "optimizer.weight_decay": 0.01,  # D5: tokenizer, >=2-D non-bias weights
    "decay_1d_and_bias": False,  # D5: 1-D parameters and biases get 0
    "disc_optimizer": None,  # D5: the same AdamW, so 0.01 (PyTorch's default) on every discriminator parameter
    "grad_clip": 1.0,  # D5: max_grad_norm 1.0 and max_grad_norm_disc 1.0
    "ema_decays": [0.9999],  # D6
    "ema_warmup": False,  # D6
    "joint_update": "per_batch",  # D7: one G and one D update per dataloader batch
}
DISC_PARAMS = 2_765_633  # D4, verified
DISC_KEYS = {  # D4: discriminator.main.{0,2,3.norm,5,6.norm,8,9.norm,11}.*
    "main.0.weight", "main.0.bias", "main.2.weight", "main.3.norm.weight", "main.3.norm.bias",
    "main.5.weight", "main.6.norm.weight", "main.6.norm.bias", "main.8.weight", "main.9.norm.weight",
    "main.9.norm.bias", "main.11.weight", "main.11.bias",
}  # fmt: skip
OFFICIAL = [("tokenizer_official_f16d16", 702_687_612), ("tokenizer_official_f16t4d64", 705_693_036)]
STAND_IN = "stages.tokenizer.lit_module.lpips.allow_random_backbone=true"  # no VGG weights offline


def hparam(hp, dotted: str):
    """``hp["optimizer"]["betas"]`` for ``"optimizer.betas"``."""
    for part in dotted.split("."):
        hp = hp[part]
    return hp


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_batch_statistics_discriminator_is_the_released_one():
    d = PatchDiscriminator(norm="batch")
    assert sum(p.numel() for p in d.parameters()) == DISC_PARAMS
    assert set(d.state_dict()) == DISC_KEYS and not list(d.buffers())  # no running statistics
    norms = batch_norms(d)
    assert len(norms) == 3 and all(not m.track_running_stats for m in norms)
    d.eval()  # batch statistics in eval too: a sample's logits depend on the rest of its batch
    x = torch.randn(4, 3, 32, 32)
    assert d(x).shape == (4, 1, 2, 2)
    assert not torch.allclose(d(x)[:1], d(x[:1]), atol=1e-3)
    synced = to_sync_batch_norm(PatchDiscriminator(norm="batch"))
    assert all(isinstance(m, nn.SyncBatchNorm) and not m.track_running_stats for m in batch_norms(synced))
    assert set(synced.state_dict()) == DISC_KEYS


def test_released_weight_decay_rule_on_the_tokenizer():
    tok = HBQTokenizer(**{k: v for k, v in TINY_TOKENIZER.items() if k != "_target_"})
    decay, no_decay = decay_groups(tok, no_decay_1d=True, weight_decay=0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    names = {id(p): n for n, p in tok.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decayed | skipped == set(names.values()) and not decayed & skipped
    assert all(n.endswith("bias") or tok.get_parameter(n).ndim < 2 for n in skipped)
    assert "encoder.conv1.weight" in decayed and "encoder.conv1.bias" in skipped
    # RMSNorm scales are [C, 1, 1, 1] as in the official files, so (like there) they are decayed
    assert "encoder.head.0.gamma" in decayed
    (everything,) = decay_groups(tok, no_decay_1d=False, weight_decay=0.0)
    assert len(everything["params"]) == len(names) and everything["weight_decay"] == 0.0


@pytest.mark.parametrize(("experiment", "tokenizer_params"), OFFICIAL)
def test_official_experiments_carry_the_released_recipe(compose_cfg, experiment, tokenizer_params):
    cfg = compose_cfg("train", [f"experiment={experiment}", STAND_IN])
    assert cfg.run_id == experiment
    with torch.device("meta"):
        module = instantiate(cfg.stages.tokenizer.lit_module)
    for key, value in FACTS.items():
        assert hparam(module.hparams, key) == value, key
    assert cfg.stages.tokenizer.lit_module.lpips.net == "vgg"  # D1: VGG16 LPIPS
    assert sum(p.numel() for p in module.tokenizer.parameters()) == tokenizer_params
    # EMA: 0.9999 from the first update on (no warm-up)
    assert module.ema.decay == 0.9999 and not module.ema.warmup
    ema = EMA(nn.Linear(2, 2), module.ema.decay, warmup=module.ema.warmup)  # the same rule on real tensors
    for _ in range(3):
        assert ema.current_decay() == 0.9999
        ema.update(nn.Linear(2, 2))
    # the 2-D NLayer discriminator (64 channels, 3 layers) with batch statistics only
    d = module.discriminator
    assert d.norm_type == "batch" and sum(p.numel() for p in d.parameters()) == DISC_PARAMS
    assert set(d.state_dict()) == DISC_KEYS
    assert all(not m.track_running_stats for m in batch_norms(d))
    # optimisers: AdamW, constant LR (no scheduler), the two weight-decay rules
    opt_g, opt_d = module.configure_optimizers()
    assert type(opt_g) is type(opt_d) is torch.optim.AdamW
    for opt in (opt_g, opt_d):
        assert all(g["lr"] == 1e-4 and g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    names = {id(p): n for n, p in module.tokenizer.named_parameters()}
    decayed, skipped = ({names[id(p)] for p in g["params"]} for g in opt_g.param_groups)
    assert [g["weight_decay"] for g in opt_g.param_groups] == [0.01, 0.0]
    assert decayed | skipped == set(names.values())
    assert all(module.tokenizer.get_parameter(n).ndim >= 2 and not n.endswith("bias") for n in decayed)
    assert all(module.tokenizer.get_parameter(n).ndim < 2 or n.endswith("bias") for n in skipped)
    (d_group,) = opt_d.param_groups
    assert d_group["weight_decay"] == 0.01 and len(d_group["params"]) == len(list(d.parameters()))


def test_our_defaults_stay_as_they_were(compose_cfg):
    """task=tokenizer without the recipe: adaptive weight, GroupNorm discriminator, (0.5, 0.9), EMA warm-up,
    no weight decay, one joint update."""
    cfg = compose_cfg("train", ["task=tokenizer", STAND_IN]).stages.tokenizer.lit_module
    assert cfg.adaptive_gan_weight and cfg.discriminator.norm == "group" and list(cfg.optimizer.betas) == [0.5, 0.9]
    assert cfg.ema_warmup and cfg.optimizer.weight_decay == 0.0 and cfg.decay_1d_and_bias
    assert cfg.joint_update == "joint" and cfg.disc_weight == 1.0 and cfg.disc_optimizer is None
    assert list(cfg.ema_decays) == [0.999] and cfg.optimizer._partial_


# ------------------------------------------------------------------------------------ CPU training steps
TINY_DATA = [
    "model/tokenizer=tiny_joint",
    "model.tokenizer.enc_channels=8",
    "model.tokenizer.dec_channels=8",
    "data.photos.crop_size=32",
    "data.photos.short_side=64",
    "data.photos.batch_size=2",
    "data.gif.crop_size=32",
    "data.gif.clip_frames=5",
    "data.gif.val_frames=5",
    "data.gif.batch_size=1",
    STAND_IN,
]
STEPS = 3


def train_steps(cfg, steps: int = STEPS):
    torch.manual_seed(0)
    datamodule = instantiate(cfg.stages.tokenizer.datamodule)
    module = instantiate(cfg.stages.tokenizer.lit_module)
    clips = []  # (optimiser, max norm) of every clipping
    clip = module.clip_gradients
    module.clip_gradients = lambda opt, **kw: (clips.append((opt, kw["gradient_clip_val"])), clip(opt, **kw))
    t = quiet_cpu_trainer(steps, limit_val_batches=1, val_check_interval=steps)
    t.fit(module, datamodule=datamodule)
    del module.clip_gradients
    return module, t, clips


@pytest.mark.parametrize("joint_update", ["per_batch", "joint"])
def test_released_joint_recipe_trains_on_cpu(compose_cfg, joint_update):
    cfg = compose_cfg(
        "train",
        ["experiment=tokenizer_official_f16t4d64", *TINY_DATA, f"stages.tokenizer.lit_module.joint_update={joint_update}"],
    )
    module, t, clips = train_steps(cfg)
    updates = 2 if joint_update == "per_batch" else 1  # image and video batch: one update each, or one together
    assert t.global_step == STEPS  # one counted step per dataloader batch
    opt_g, opt_d = t.optimizers
    for opt in (opt_g, opt_d):
        assert int(next(iter(opt.state.values()))["step"]) == updates * STEPS
        assert [v for o, v in clips if o is opt] == [1.0] * (updates * STEPS)  # clipped at 1.0, every update
    assert int(module.ema.num_updates) == updates * STEPS
    metrics = t.callback_metrics
    # GAN from step 0 at the fixed weight 0.3 (no adaptive weight), on images and video frames alike
    torch.testing.assert_close(metrics["train/gan_weight"], torch.tensor(0.3))
    for key in ("l1", "lpips", "gan_g", "gan_d"):
        for part in ("_image", "_video"):
            assert torch.isfinite(metrics[f"train/{key}{part}"]), key + part
    expected = metrics["train/l1"] + metrics["train/lpips"] + 0.3 * metrics["train/gan_g"]
    torch.testing.assert_close(metrics["train/loss"], expected)
    assert torch.isfinite(metrics["val/psnr_image"]) and torch.isfinite(metrics["val/psnr_video"])


def test_released_image_recipe_trains_on_cpu(compose_cfg):
    overrides = [
        "experiment=tokenizer_official_f16d16",
        "model/tokenizer=tiny",
        "model.tokenizer.enc_channels=8",
        "model.tokenizer.dec_channels=8",
        "data.crop_size=32",
        "data.short_side=64",
        "data.batch_size=2",
        STAND_IN,
    ]
    module, t, clips = train_steps(compose_cfg("train", overrides), steps=2)
    assert t.global_step == 2 and int(module.ema.num_updates) == 2  # an image batch: one update per batch
    assert len(clips) == 4 and {v for _, v in clips} == {1.0}
    assert torch.isfinite(t.callback_metrics["train/gan_d"]) and torch.isfinite(t.callback_metrics["val/psnr"])
