"""The released T2I/T2V recipe (conf/recipe/t2iv_official.yaml, experiment=t2iv_official and
experiment=t2iv_official_digits): every hyper-parameter against the facts (reference/official_update.md §C3-C9),
the per-sample loss weights, the packed objective against the plain one, gradient accumulation that really
accumulates, and a stopped-and-resumed packed run equal to an uninterrupted one."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

import grn.lit_modules.t2iv as t2iv_module
from grn.datamodules.captioned import CaptionedDigitsDataModule, EncodedCaptionedDataModule
from grn.datamodules.seq_packing import PackedSampler
from grn.distributed.resume import ExactResume
from grn.models.ema import EMA
from grn.lit_modules.t2iv import T2IVLitModule

from tiny_nets import quiet_cpu_trainer, tiny_t2iv_config, tiny_text_encoder_config, tiny_tokenizer_ckpt

# The released recipe, from the facts (official_update.md §C, the script scripts/t2iv/train_GRN_bit_t2iv.sh).
FACTS = {
    "lr": 2e-4,  # C8 tlr
    "grad_clip": 0.1,  # C8 tclip
    "ema_decays": [0.999],  # C6/C8 model_ema_decay, every step
    "ema_warmup": False,  # C6: update_ema(gpt_ema, gpt, 0.999) from the first step
    "keep_prob_mean": -1.3,  # C3 log_norm_mean
    "keep_prob_std": 1.3,  # C3 log_norm_sigma > 0: logit-normal
    "keep_prob_shift": 1.0,  # C3 alpha=1001: shift 1, none
    "pt_value": "realised",  # C3 precise_spt
    "loss_weight_power": 0.5,  # C4 reweight_loss_by_scale
    "caption_drop_prob": 0.1,  # C8 drop_condition_prob
    "prompt_prefix": True,  # A6: <T2I> / <T2V>
    "i2v_ratio": 0.0,  # B1 / C8: the released script trains no clip with the first-frame condition
}
BETAS, WEIGHT_DECAY = (0.9, 0.999), 0.01  # C5 hard-coded betas, C8 twd
WARMUP_ITERS, WP0 = 50, 0.005  # C8 wp_it, C5 wp0
BUDGET, DENSE_RATIO = 40960, 0.4  # C8 train_max_token_len, dense_ratio4seqpack
EXPERIMENTS = ["t2iv_official", "t2iv_official_digits"]


def official_lrs(tlr: float, wp_it: int, wp0: float, iters: int) -> list[float]:
    """The LR each iteration of the released ``train_one_ep`` trains at: ``g_it += 1``, then the ratio
    ``wp0 + (1 - wp0)·g/wp_it`` is written into the optimiser only while it is below 1 (epoch 0)."""
    lr, out = tlr, []
    for g_it in range(1, iters + 1):
        ratio = wp0 + (1 - wp0) * g_it / wp_it if g_it < wp_it else 1
        if ratio < 1:
            lr = tlr * ratio
        out.append(lr)
    return out


def compose(compose_cfg, experiment, tmp_path):
    extra = [f"data.root={tmp_path}"] if experiment == "t2iv_official" else []
    return compose_cfg("train", [f"experiment={experiment}", *extra])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_experiments_carry_the_released_recipe(compose_cfg, tmp_path, experiment):
    cfg = compose(compose_cfg, experiment, tmp_path)
    assert cfg.run_id == experiment
    stage = cfg.stages.t2v
    with torch.device("meta"):
        module = instantiate(stage.lit_module)
    hp = module.hparams
    for key, value in FACTS.items():
        assert hp[key] == value, key
    assert module.net.attention == "fsa"  # C2: full attention within each sample (the *_FSA_* releases)
    # AdamW (0.9, 0.999), wd 0.01 on matrices, 0 on 1-D parameters and biases (filter_params), lr 2e-4
    out = module.configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert type(opt) is torch.optim.AdamW and out["lr_scheduler"]["interval"] == "step"
    assert [g["weight_decay"] for g in opt.param_groups] == [WEIGHT_DECAY, 0.0]
    assert all(g["betas"] == BETAS for g in opt.param_groups)
    names = {id(p): n for n, p in module.net.named_parameters()}
    decayed, free = ({names[id(p)] for p in g["params"]} for g in opt.param_groups)
    assert all(module.net.get_parameter(n).ndim >= 2 and not n.endswith("bias") for n in decayed)
    assert all(module.net.get_parameter(n).ndim < 2 or n.endswith("bias") for n in free)
    # warm-up over 50 iterations from 0.005·lr, then constant where the released loop leaves it (0.9801·lr)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = official_lrs(FACTS["lr"], WARMUP_ITERS, WP0, 60)
    torch.testing.assert_close(torch.tensor(lrs, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-12, atol=0)
    assert lrs[-1] == pytest.approx(0.9801 * FACTS["lr"], rel=1e-12)
    # EMA 0.999 after every step, no warm-up
    (ema,) = module.emas.values()
    assert ema.decay == 0.999 and not ema.warmup
    live, avg = torch.nn.Linear(2, 2), None
    same_rule = EMA(live, ema.decay, warmup=ema.warmup)  # the module's rule on real tensors
    for _ in range(3):
        assert same_rule.current_decay() == 0.999
        avg = same_rule.shadow__weight.clone()
        with torch.no_grad():
            live.weight.add_(1.0)
        same_rule.update(live)
        torch.testing.assert_close(same_rule.shadow__weight, 0.999 * avg + 0.001 * live.weight)
    # two-pointer packing: one packed sequence per step; the dense cap (the digits budget is scaled down)
    assert stage.datamodule.pack_dense_ratio == DENSE_RATIO
    assert stage.datamodule.pack_budget == (BUDGET if experiment == "t2iv_official" else 2048)
    if experiment == "t2iv_official":
        assert cfg.model.generator.size == "grn0b"  # C8 --model=GRN0b
        for part in (cfg.data.image, cfg.data.video):
            assert part.prompt_prefix and part.short_caption_prob == 0.0  # A6; C8 short_cap_prob 0
            assert part.pn == "0.41M"  # C8 pn_list ["0.41M"]
        assert (cfg.data.video.fps, cfg.data.video.num_frames) == (16.0, 209)  # C8 video_fps, video_frames
    else:
        assert stage.datamodule.source.prompt_prefix and stage.datamodule.source.kind == "mixed"
    assert (cfg.sampler.pt_value, cfg.sampler.get("schedule", "official_t2iv")) == ("realised", cfg.sampler.schedule)


def test_keep_probabilities_are_logit_normal_without_shift(compose_cfg, tmp_path):
    cfg = compose(compose_cfg, "t2iv_official_digits", tmp_path)
    module = instantiate(cfg.stages.t2v.lit_module)
    t = module.sample_keep_prob(200_000, torch.Generator().manual_seed(0)).double()
    logit = torch.log(t) - torch.log1p(-t)
    # n = 2e5: the mean's standard error is 1.3/447 = 0.003, the std's 1.3/632 = 0.002 (bounds: 5 of them)
    assert abs(logit.mean().item() + 1.3) < 0.015 and abs(logit.std().item() - 1.3) < 0.01
    assert abs(t.median().item() - 1 / (1 + math.exp(1.3))) < 0.003  # median sigmoid(-1.3) = 0.214


# ------------------------------------------------------------------------------------------ the loss (§C4)
NET = tiny_t2iv_config(2, 2, attention="fsa")
TEXT = tiny_text_encoder_config()


def module(**kw) -> T2IVLitModule:
    torch.manual_seed(0)
    return T2IVLitModule(net=NET, text_encoder=TEXT, **kw)


def tokens(n, frames=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (n, 2, frames, 4, 4) if frames else (n, 2, 4, 4), generator=g)


def joint(n_img, n_vid, seed=0):
    return {"image": {"tokens": tokens(n_img, seed=seed), "caption": [f"<T2I>image {i}" for i in range(n_img)]},
            "video": {"tokens": tokens(n_vid, 3, seed=seed + 1),
                      "caption": [f"<T2V>clip {i}" for i in range(n_vid)]}}


@pytest.fixture
def fixed_draws(monkeypatch):
    """Draws that depend on each label only (not on its position in a batch), so a batch split into micro-batches
    or packed into rows sees the same keep-probabilities, noise and masks."""
    def mix(x, t, num_levels, generator=None):
        keep = (x + torch.arange(x.shape[1]).view(1, -1, *[1] * (x.dim() - 2))) % 3 != 0
        return torch.where(keep, x, (x + 1) % num_levels), keep

    monkeypatch.setattr(t2iv_module, "mix_with_noise_and_mask", mix)
    monkeypatch.setattr(T2IVLitModule, "sample_keep_prob", lambda self, n, generator=None: torch.full((n,), 0.4))


def test_loss_weights_follow_the_token_count_to_the_power_r():
    batch = joint(2, 3)
    for r in (0.5, 0.0):
        m = module(caption_drop_prob=0.0, loss_weight_power=r, prompt_prefix=True)
        loss, per_kind, _ = m.objective(batch, generator=torch.Generator().manual_seed(7))
        n = torch.tensor([16.0] * 2 + [48.0] * 3)  # T·h·w: images 4×4, clips 3×4×4
        w = n**r / (n**r).sum()
        torch.testing.assert_close(loss, (torch.cat([per_kind["image"], per_kind["video"]]) * w).sum())
    # r = 0.5: a clip weighs sqrt(3) times an image
    assert w.tolist() == pytest.approx([0.2] * 2 + [0.2] * 3)  # r = 0 (the last one): equal weights


def test_packed_objective_equals_the_plain_one(fixed_draws):
    """Three images and two clips packed into two rows give every sample the loss it gets in plain batches, and
    the batch loss is the same N^0.5-weighted sum."""
    m = module(caption_drop_prob=0.0, loss_weight_power=0.5, pt_value="realised", prompt_prefix=True)
    plain = joint(3, 2)
    loss, per_kind, acc = m.objective(plain)
    samples = [(t, c) for kind in ("image", "video") for t, c in zip(plain[kind]["tokens"], plain[kind]["caption"])]
    packed = {"tokens": [t for t, _ in samples], "caption": [c for _, c in samples], "rows": [[0, 3], [1, 2, 4]]}
    loss_p, per_kind_p, acc_p = m.objective(packed)
    for kind in ("image", "video"):
        torch.testing.assert_close(per_kind_p[kind], per_kind[kind], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_p, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(acc_p, acc, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["i2v_ratio", "data flags"])
def test_packed_first_frame_clips_get_the_loss_of_plain_batches(fixed_draws, how):
    """I2V inside packed sequences (the released trainer packs every batch): a clip with the first-frame condition
    — all clips at i2v_ratio 1, or those the data flags — is laid out as [frames 1… | clean frame 0 | pt | text]
    and gets the loss it gets in a plain batch; images and unflagged clips are untouched. Broken layouts (frame 0
    predicted, or not given as the condition) change the conditioned clips' losses."""
    ratio, flags = (1.0, torch.tensor([True, True])) if how == "i2v_ratio" else (0.0, torch.tensor([True, False]))
    m = module(caption_drop_prob=0.0, loss_weight_power=0.5, pt_value="realised", prompt_prefix=True,
               i2v_ratio=ratio)
    with torch.no_grad():  # weights large enough that every input token moves the logits visibly
        gen = torch.Generator().manual_seed(1)
        for p in m.net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() > 1 else 0.1))
    plain = joint(3, 2)
    if how == "data flags":
        plain["video"]["first_frame_condition"] = flags
    loss, per_kind, acc = m.objective(plain, generator=torch.Generator().manual_seed(3))
    samples = [(t, c) for kind in ("image", "video") for t, c in zip(plain[kind]["tokens"], plain[kind]["caption"])]
    packed = {"tokens": [t for t, _ in samples], "caption": [c for _, c in samples], "rows": [[0, 3], [1, 2, 4]]}
    if how == "data flags":
        packed["first_frame_condition"] = torch.tensor([False, False, False, *flags.tolist()])
    loss_p, per_kind_p, acc_p = m.objective(packed, generator=torch.Generator().manual_seed(3))
    for kind in ("image", "video"):
        torch.testing.assert_close(per_kind_p[kind], per_kind[kind], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_p, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(acc_p, acc, rtol=1e-5, atol=1e-6)
    unconditioned = module(caption_drop_prob=0.0, loss_weight_power=0.5, pt_value="realised", prompt_prefix=True)
    unconditioned.net.load_state_dict(m.net.state_dict())
    _, per_kind_u, _ = unconditioned.objective({k: v for k, v in packed.items() if k != "first_frame_condition"})
    torch.testing.assert_close(per_kind_u["image"], per_kind["image"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(per_kind_u["video"][flags], per_kind["video"][flags])


def test_prefix_guard_and_the_digits_prefixes():
    m = module(caption_drop_prob=0.0, prompt_prefix=True)
    with pytest.raises(ValueError, match="prompt_prefix"):
        m.objective({"tokens": tokens(2), "caption": ["a handwritten one", "<T2I>a handwritten two"]})
    dm = CaptionedDigitsDataModule(kind="mixed", image_size=16, frames=5, digit_size=8, prompt_prefix=True)
    dm.setup()
    caps = dm.train_set.captions
    images = len(dm.train_set.parts[0])
    assert all(c.startswith("<T2I>a") or c.startswith("<T2I>the") for c in caps[:images])
    assert all(c.startswith("<T2V>") and (" moving " in c or " sliding " in c) for c in caps[images:])


# ----------------------------------------------------------------------------- gradient accumulation (§C5)
def recipe_module(**kw) -> T2IVLitModule:
    sched = {"_target_": "grn.lit_modules.optim.warmup_constant", "_partial_": True, "warmup_steps": 50,
             "start_factor": 0.005, "stop_short": True}
    opts = dict(lr=2e-4, grad_clip=0.1, ema_decays=[0.999], ema_warmup=False, loss_weight_power=0.5,
                pt_value="realised", keep_prob_shift=1.0, keep_prob_mean=-1.3, keep_prob_std=1.3,
                caption_drop_prob=0.0, prompt_prefix=True, lr_scheduler=sched,
                optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "betas": [0.9, 0.999],
                           "weight_decay": 0.01})
    return module(**{**opts, **kw})


def cat_batches(a, b):
    return {k: {"tokens": torch.cat([a[k]["tokens"], b[k]["tokens"]]), "caption": a[k]["caption"] + b[k]["caption"]}
            for k in a}


def fit(m, batches, steps, **trainer_kw):
    grads = []
    seen = m.on_before_optimizer_step

    def record(optimizer):  # the gradient the step uses, before clipping
        grads.append(torch.cat([p.grad.flatten() for p in m.net.parameters()]).clone())
        seen(optimizer)

    m.on_before_optimizer_step = record
    trainer = quiet_cpu_trainer(steps, limit_val_batches=0, **trainer_kw)
    trainer.fit(m, torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer, grads


def test_gradient_accumulation_equals_one_batch_of_the_combined_size(fixed_draws):
    """4 micro-batches with accumulate_grad_batches=2 and 2 batches of twice the size: the same two updates
    (gradient before clipping, clipped AdamW step with the warm-up LR, EMA, optimiser moments). Every micro-batch
    holds 2 images and 2 clips, so the N^0.5 weights of the big batch are those of the micro-batches halved, and
    Lightning's 1/2 loss scale makes the accumulated gradient the big batch's gradient exactly in real arithmetic;
    in float32 the two only sum the per-sample terms in another order."""
    micro = [joint(2, 2, seed=10 * i) for i in range(4)]
    big = [cat_batches(micro[0], micro[1]), cat_batches(micro[2], micro[3])]
    a, b = recipe_module(), recipe_module()
    ta, grads_a = fit(a, micro, 2, accumulate_grad_batches=2)
    tb, grads_b = fit(b, big, 2)
    assert ta.global_step == tb.global_step == 2 and len(grads_a) == len(grads_b) == 2
    for ga, gb in zip(grads_a, grads_b):
        # float32 sums of O(100) per-sample contributions in two orders: a few ulps of the largest gradient
        torch.testing.assert_close(ga, gb, rtol=0, atol=64 * torch.finfo(torch.float32).eps * gb.abs().max().item())
        assert torch.linalg.vector_norm(gb) > 0.1  # clipping (max norm 0.1) is active, on the summed gradient
    # an AdamW step moves each weight by at most ~lr; one float32 ulp of the weights and moments is the tolerance
    for (name, pa), pb in zip(a.net.named_parameters(), b.net.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7, msg=name)
    for sa, sb in zip(a.emas["ema1"].buffers(), b.emas["ema1"].buffers()):
        torch.testing.assert_close(sa, sb, rtol=1e-5, atol=1e-7)
    state_a, state_b = ta.optimizers[0].state_dict()["state"], tb.optimizers[0].state_dict()["state"]
    for key in state_b:
        torch.testing.assert_close(state_a[key]["exp_avg"], state_b[key]["exp_avg"], rtol=1e-4, atol=1e-9)
        assert int(state_a[key]["step"]) == int(state_b[key]["step"]) == 2
    assert ta.optimizers[0].param_groups[0]["lr"] == tb.optimizers[0].param_groups[0]["lr"]
    # the released loop would instead step after every micro-batch with the gradients summed so far (§C5)
    assert not torch.allclose(grads_a[0], fit(recipe_module(), micro[:1], 1)[1][0])


# ----------------------------------------------------------------------------- resume with the optimiser state
@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    return tiny_tokenizer_ckpt(tmp_path_factory.mktemp("tok") / "tok.ckpt", config="tiny_joint")


@pytest.fixture(scope="module")
def encoded(tokenizer_file):
    """Mixed digits (images and clips) encoded once; each run gets a fresh datamodule over the same sets."""
    dm = packed_data(tokenizer_file)
    dm.setup("fit")
    return dm


def packed_data(tokenizer_file, encoded=None) -> EncodedCaptionedDataModule:
    source = CaptionedDigitsDataModule(kind="mixed", image_size=16, frames=5, digit_size=8, clips_per_digit=1,
                                       prompt_prefix=True)
    dm = EncodedCaptionedDataModule(source, str(tokenizer_file), text_encoder=TEXT, pack_budget=400,
                                    pack_dense_ratio=0.4, seed=0)
    if encoded is not None:  # setup() then finds the sets in place
        dm.train_set, dm.val_set, dm._pack_counts = encoded.train_set, encoded.val_set, encoded._pack_counts
    return dm


def packed_run(tokenizer_file, encoded, steps, ckpt_in=None, ckpt_dir=None):
    """``steps`` optimiser steps of the recipe on packed mixed digits; ``ckpt_dir``: checkpoint every 3 steps
    there (inside the epoch, as train.py's periodic checkpoint and a kill after it)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(1)
    m = T2IVLitModule(net=tiny_t2iv_config(8, 4, attention="fsa"), text_encoder=TEXT, **{
        k: v for k, v in recipe_module().hparams.items() if k not in ("net", "text_encoder", "tokenizer_ckpt")},
        tokenizer_ckpt=str(tokenizer_file))
    m.hparams.caption_drop_prob = 0.1  # the released drop, drawn from the (restored) global RNG
    resume = ExactResume(seed=0)
    dm = resume.wrap(packed_data(tokenizer_file, encoded))
    callbacks = [resume]
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", every_n_train_steps=3,
                                         save_top_k=-1, auto_insert_metric_name=False))
    trainer = quiet_cpu_trainer(steps, limit_val_batches=0, callbacks=callbacks,
                                enable_checkpointing=ckpt_dir is not None)
    trainer.fit(m, datamodule=dm, ckpt_path=ckpt_in, weights_only=True)
    return trainer, m


def test_stopped_and_resumed_packed_run_equals_the_uninterrupted_one(tokenizer_file, encoded, tmp_path):
    straight, m_straight = packed_run(tokenizer_file, encoded, 6)
    assert isinstance(straight.train_dataloader.sampler, PackedSampler)
    packed_run(tokenizer_file, encoded, 3, ckpt_dir=tmp_path)  # stops after its step-3 checkpoint
    saved = torch.load(tmp_path / "step3.ckpt", weights_only=True)
    assert saved["optimizer_states"][0]["state"] and saved["lr_schedulers"]  # the optimiser state is saved
    assert saved["grn_resume"]["batches"] == 3  # and the data position and RNG states (ExactResume)
    resumed, m_resumed = packed_run(tokenizer_file, encoded, 6, ckpt_in=tmp_path / "step3.ckpt")
    assert resumed.global_step == straight.global_step == 6
    for (name, a), b in zip(m_straight.state_dict().items(), m_resumed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    for sa, sb in zip(straight.optimizers[0].state_dict()["state"].values(),
                      resumed.optimizers[0].state_dict()["state"].values()):
        torch.testing.assert_close(sb["exp_avg_sq"], sa["exp_avg_sq"], rtol=0, atol=0)
    assert resumed.optimizers[0].param_groups[0]["lr"] == straight.optimizers[0].param_groups[0]["lr"]
