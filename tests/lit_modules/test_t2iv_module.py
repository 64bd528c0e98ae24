"""T2IVLitModule: shifted keep-probabilities, the per-sample loss, caption dropout, joint batches, fit + reload +
sampling from captions."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from grn.checkpoints import load_t2iv
from grn.lit_modules.t2iv import T2IVLitModule
from grn.sampling.text import sample_t2iv

NET = {"_target_": "grn.models.t2iv.build_t2iv", "size": "tiny", "latent_dim": 2, "hbq_rounds": 2,
       "target": "bits", "text_dim": 16}
TEXT = {"_target_": "grn.models.text_encoder.tiny_text_encoder", "dim": 16, "num_layers": 1, "num_heads": 2}


def module(**kw):
    torch.manual_seed(0)
    return T2IVLitModule(net=NET, text_encoder=TEXT, **kw)


def batch(n=4, frames=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 2, frames, 4, 4) if frames else (n, 2, 4, 4)
    y = torch.arange(n) % 2
    tokens = (y.view(-1, *[1] * (len(shape) - 1)) * 3 + torch.randint(0, 2, shape, generator=g)) % 4
    return {"tokens": tokens, "caption": [f"a handwritten {'one' if v else 'zero'}" for v in y.tolist()]}


def test_loss_is_a_mean_over_samples_not_tokens():
    m = module(caption_drop_prob=0.0)
    joint = {"image": batch(1), "video": batch(3, frames=3, seed=1)}
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    loss, per_kind, _ = m.objective(joint, generator=g())
    assert per_kind["image"].shape == (1,) and per_kind["video"].shape == (3,)
    # one image counts as much as one clip although a clip has 3x the tokens
    expected = torch.cat([per_kind["image"], per_kind["video"]]).mean()
    torch.testing.assert_close(loss, expected)
    token_weighted = (per_kind["image"].sum() + 3 * per_kind["video"].sum()) / 10
    assert not torch.allclose(loss, token_weighted)


def test_caption_dropout_uses_the_empty_caption():
    m = module(caption_drop_prob=1.0)
    seen = []
    enc = m.encode_captions
    m.encode_captions = lambda caps: seen.extend(caps) or enc(caps)
    m.objective(batch(3))
    assert seen == ["", "", ""]
    m2 = module(caption_drop_prob=0.0)
    enc2 = m2.encode_captions
    seen.clear()
    m2.encode_captions = lambda caps: seen.extend(caps) or enc2(caps)
    m2.objective(batch(3))
    assert seen == batch(3)["caption"]


def test_precomputed_text_features_are_used_as_given():
    m = module(caption_drop_prob=0.0)
    b = batch(2)
    feats = m.encode_captions(b["caption"])
    text = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    pre = {"tokens": b["tokens"], "text": text, "text_lens": torch.tensor([f.shape[0] for f in feats])}
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    torch.testing.assert_close(m.objective(pre, generator=g())[0], m.objective(b, generator=g())[0])


def test_fit_lowers_loss_reloads_and_samples(tmp_path):
    m = module(lr=3e-3, caption_drop_prob=0.1, ema_decays=[0.5])
    data = [batch(8, seed=s) for s in range(4)]
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    with torch.no_grad():
        before = m.objective(data[0], generator=g(), drop=False)[0].item()
    loader = DataLoader(data * 10, batch_size=None)
    trainer = L.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, loader)
    with torch.no_grad():
        after = m.objective(data[0], generator=g(), drop=False)[0].item()
    assert after < before - 0.05
    path = tmp_path / "t2i.ckpt"
    trainer.save_checkpoint(path)
    net, hp = load_t2iv(path)
    assert hp["text_encoder"]["dim"] == 16
    with m.ema_weights():  # the reloaded network carries the EMA weights, not the live ones
        torch.testing.assert_close(net.head.proj.weight, m.net.head.proj.weight)
    assert not torch.allclose(net.head.proj.weight, m.net.head.proj.weight)
    res = sample_t2iv(net, m.encode_captions, ["a handwritten one", "a handwritten zero"], (4, 4, 4),
                      torch.Generator().manual_seed(0), num_steps=4, cfg_scale=2.0)
    again = sample_t2iv(net, m.encode_captions, ["a handwritten one", "a handwritten zero"], (4, 4, 4),
                        torch.Generator().manual_seed(0), num_steps=4, cfg_scale=2.0)
    assert res.labels.shape == (2, 2, 4, 4) and res.labels.max() < 4
    assert torch.equal(res.labels, again.labels)
    video = sample_t2iv(net, m.encode_captions, ["a handwritten one"], (4, 3, 4, 4),
                        torch.Generator().manual_seed(0), num_steps=3)
    assert video.labels.shape == (1, 2, 3, 4, 4)


def test_bf16_sampling_from_captions():
    """sampler.precision=bf16 for T2I: the blocks' matmuls run in bf16, the label head (the logits the sampler
    draws from) in fp32; the labels have the fp32 shape and range and repeat for the same seed."""
    m = module()
    net = m.net.eval()
    with torch.no_grad():
        for p in net.head.parameters():  # the head starts at zero: give the logits something to follow
            p.normal_(0, 0.5)
    seen = {"attn": set(), "head": set()}
    net.blocks[0].attn.q_proj.register_forward_hook(lambda mod, i, out: seen["attn"].add(out.dtype))
    net.head.register_forward_hook(lambda mod, i, out: seen["head"].add(out.dtype))
    captions = ["a handwritten one", "a handwritten zero"]
    opts = dict(num_steps=3, cfg_scale=2.0, precision="bf16")
    res = sample_t2iv(net, m.encode_captions, captions, (4, 4, 4), torch.Generator().manual_seed(0), **opts)
    again = sample_t2iv(net, m.encode_captions, captions, (4, 4, 4), torch.Generator().manual_seed(0), **opts)
    assert seen == {"attn": {torch.bfloat16}, "head": {torch.float32}}
    assert res.labels.shape == (2, 2, 4, 4) and res.labels.min() >= 0 and res.labels.max() < 4
    assert torch.equal(res.labels, again.labels)


def test_training_tells_the_network_the_realised_share():
    """pt_value=realised (official update §C3): the pt token gets each sample's share of kept labels, from the
    same draws as the nominal run."""
    tokens = torch.randint(0, 4, (3, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    batch = {"tokens": tokens, "caption": ["a", "b", "c"]}
    seen = {}
    for pt_value in ("nominal", "realised"):
        m = module(caption_drop_prob=0.0, pt_value=pt_value)
        forward = m.net.forward
        m.net.forward = lambda z, t, *a, _f=forward, _k=pt_value: seen.setdefault(_k, (z, t)) and _f(z, t, *a)
        m.objective(batch, generator=torch.Generator().manual_seed(5))
    (z_n, t_n), (z_r, t_r) = seen["nominal"], seen["realised"]
    assert torch.equal(z_n, z_r)  # the same draws; only the pt value differs
    x = T2IVLitModule.target_labels(m, tokens)
    g = torch.Generator().manual_seed(5)
    t = m.sample_keep_prob(3, g)
    torch.randint(0, 2, x.shape, generator=g)  # the noise, drawn before the mask (grn.objective)
    keep = torch.rand(x.shape, generator=g) < t.view(-1, 1, 1, 1)
    torch.testing.assert_close(t_n, t)
    torch.testing.assert_close(t_r, keep.flatten(1).float().mean(1))
    assert not torch.allclose(t_r, t_n)
    with pytest.raises(ValueError, match="pt_value"):
        module(pt_value="exact")


def test_i2v_ratio_trains_clips_in_the_official_first_frame_form():
    """i2v_ratio (official update §B1, §B10): conditioned clips give the network their clean latent frame 0 as the
    first-frame tokens and the mixed frames 1… as the map; the loss is over frames 1… only; the pt value is
    drawn over all T frames (realised: the whole mask's mean, the official precise_spt); a <T2V> caption
    becomes <I2V>. i2v_ratio 0 makes exactly the draws and the loss of a run without the option."""
    import torch.nn.functional as F

    from grn.objective import mix_with_noise_and_mask

    b = batch(3, frames=3, seed=2)
    b["caption"] = ["<T2V>a handwritten one", "a handwritten zero", "<T2V>a handwritten one"]
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    runs = {}
    for ratio in (0.0, 1.0):
        m = module(caption_drop_prob=0.0, pt_value="realised", i2v_ratio=ratio)
        calls, seen = [], []
        forward = m.net.forward
        m.net.forward = lambda z, t, *a, _f=forward, _c=calls, **kw: _c.append((z, t, kw.get("first_frame"))) or \
            _f(z, t, *a, **kw)
        enc = m.encode_captions
        m.encode_captions = lambda caps, _e=enc, _s=seen: _s.extend(caps) or _e(caps)
        loss, per_kind, _ = m.objective(b, generator=g())
        runs[ratio] = (m, loss, per_kind["video"], list(calls), list(seen))
    m, loss0, per0, calls0, seen0 = runs[0.0]
    x = T2IVLitModule.target_labels(m, b["tokens"])
    gen = g()
    t = m.sample_keep_prob(3, gen)
    z, keep = mix_with_noise_and_mask(x, t, 2, gen)  # the draws of a run without i2v_ratio
    assert len(calls0) == 1 and calls0[0][2] is None and torch.equal(calls0[0][0], z)
    with torch.no_grad():
        plain = F.cross_entropy(m.net(z, keep.flatten(1).float().mean(1), *m._text(b, None)).float(), x,
                                reduction="none").flatten(1).mean(1)
    torch.testing.assert_close(per0, plain)
    assert seen0 == b["caption"]

    m1, loss1, per1, calls1, seen1 = runs[1.0]
    assert len(calls1) == 1
    z1, t1, first = calls1[0]
    gen = g()
    m1.sample_keep_prob(3, gen)
    assert torch.rand(3, generator=gen).lt(1.0).all()  # the condition draw comes after t (no caption dropout)
    z_c, keep_c = mix_with_noise_and_mask(x, t, 2, gen)
    assert torch.equal(first, x[:, :, :1]) and torch.equal(z1, z_c[:, :, 1:])  # clean frame 0, mixed frames 1…
    torch.testing.assert_close(t1, keep_c.flatten(1).float().mean(1))  # over all T frames, frame 0 included
    with torch.no_grad():
        logits = m1.net(z_c[:, :, 1:], t1, *m1._text(b, None, torch.ones(3, dtype=torch.bool)),
                        first_frame=x[:, :, :1])
    torch.testing.assert_close(per1, F.cross_entropy(logits.float(), x[:, :, 1:], reduction="none").flatten(1).mean(1))
    assert seen1 == ["<I2V>a handwritten one", "a handwritten zero", "<I2V>a handwritten one"]
    images = batch(2)  # images and one-frame clips are never conditioned
    torch.testing.assert_close(runs[1.0][0].objective(images, generator=g())[0],
                               module(caption_drop_prob=0.0, pt_value="realised").objective(images, generator=g())[0])
    with pytest.raises(ValueError, match="i2v_ratio"):
        module(i2v_ratio=1.5)


def test_a_mixed_batch_runs_each_clip_in_its_own_form():
    from grn.objective import draw_first_frame_condition, text_sample_losses

    m = module()
    x = T2IVLitModule.target_labels(m, batch(4, frames=3, seed=3)["tokens"])
    z = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1))
    pt = torch.tensor([0.1, 0.4, 0.6, 0.9])
    text, lens = m._text({"caption": ["a", "bb", "ccc", "dddd"]}, None)
    cond = torch.tensor([True, False, False, True])
    with torch.no_grad():
        mixed = text_sample_losses(m.net, x, z, pt, text, lens, cond)
        for i in range(4):
            one = text_sample_losses(m.net, x[i:i + 1], z[i:i + 1], pt[i:i + 1], text[i:i + 1], lens[i:i + 1],
                                     cond[i:i + 1])
            torch.testing.assert_close(mixed[i:i + 1], one)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert draw_first_frame_condition(x, 0.0, gen) is None and torch.equal(gen.get_state(), state)  # no draw
    assert draw_first_frame_condition(x[:, :, :1], 1.0, gen) is None  # one latent frame: nothing to generate
    assert draw_first_frame_condition(x, 1.0, gen).all() and not draw_first_frame_condition(x, 1e-9, gen).any()


def test_clips_the_data_marks_are_trained_with_the_first_frame_condition():
    """A jsonl line with ``first_frame_condition: true`` (the batch's ``first_frame_condition`` flags) is trained in
    the official first-frame form even at i2v_ratio 0, as the official trainer conditions every clip its metadata
    marks (§B1): the marked rows' loss is the conditioned loss of the same draws, the others the plain one. Flags on
    images are ignored."""
    from grn.objective import mix_with_noise_and_mask, text_sample_losses

    b = batch(3, frames=3, seed=4)
    b["caption"] = ["<I2V>a handwritten zero", "<T2V>a handwritten one", "<I2V>a handwritten zero"]
    flags = torch.tensor([True, False, True])
    g = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    m = module(caption_drop_prob=0.0, pt_value="realised")
    _, marked, _ = m.objective({**b, "first_frame_condition": flags}, generator=g())
    _, plain, _ = m.objective(b, generator=g())
    x = T2IVLitModule.target_labels(m, b["tokens"])
    gen = g()
    t = m.sample_keep_prob(3, gen)
    z, keep = mix_with_noise_and_mask(x, t, 2, gen)  # no draw for the flags: the same draws as a plain run
    with torch.no_grad():
        want = text_sample_losses(m.net, x, z, keep.flatten(1).float().mean(1), *m._text(b, None), flags)
    torch.testing.assert_close(marked["video"], want)
    torch.testing.assert_close(marked["video"][1], plain["video"][1])
    assert not torch.allclose(marked["video"][[0, 2]], plain["video"][[0, 2]])
    images = batch(2)
    torch.testing.assert_close(m.objective({**images, "first_frame_condition": torch.ones(2, dtype=torch.bool)},
                                           generator=g())[0], m.objective(images, generator=g())[0])
