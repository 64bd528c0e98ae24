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
