"""Official layout: checkpoints load by name, and the fast network/sampler match the straightforward reference."""

import pytest
import torch

from grn.checkpoints.official_c2i import c2i_checkpoint, infer_c2i_config, load_official_c2i
from grn.models.generator import build_generator
from reference_grn import reference_logits, reference_sample
from tiny_nets import input_dependent_init  # tests/ is on sys.path via conftest


def randomised(target="index", size="tiny", seed=0, **kw):
    torch.manual_seed(seed)
    net = build_generator(size, latent_dim=4, hbq_rounds=3, target=target, num_classes=10, input_size=8, **kw)
    with torch.no_grad():
        for name, p in net.named_parameters():  # leave the zero init: every path must carry signal
            p.normal_(0, 0.3 if "adaLN" in name or "final_layer" in name else 0.1)
    return net.eval()


@pytest.mark.parametrize("target", ["index", "bits"])
def test_fast_forward_matches_reference(target):
    net = randomised(target)
    labels = torch.randint(0, net.num_levels, (3, net.label_channels, 8, 8))
    t, y = torch.tensor([0.0, 0.4, 0.9]), torch.tensor([1, 10, 4])
    with torch.no_grad():
        assert torch.allclose(net(labels, t, y), reference_logits(net, labels, t, y), atol=1e-5, rtol=1e-5)


def input_dependent(target="index", seed=0):
    """The tiny network re-initialised so that its logits follow the input map (tests/tiny_nets.py)."""
    torch.manual_seed(seed)
    net = build_generator("tiny", latent_dim=4, hbq_rounds=3, target=target, num_classes=10, input_size=8)
    return input_dependent_init(net)


def test_sampler_matches_reference_sampler():
    """Same seed: every step's input map and the labels equal the plain sampler's. The network must depend on its
    input (asserted), or a sampler that feeds it the wrong map would still match."""
    from grn.sampling.entry import sample_labels

    net = input_dependent("index", seed=1)
    y = torch.tensor([0, 3, 7, 9])
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randint(0, 8, (4, 4, 8, 8), generator=g), torch.randint(0, 8, (4, 4, 8, 8), generator=g)
    with torch.no_grad():
        a, b = net(z1, torch.full((4,), 0.5), y), net(z2, torch.full((4,), 0.5), y)
    assert (a - b).abs().mean() > 0.5 * a.std()
    seen = []
    hook = net.register_forward_pre_hook(lambda m, args: seen.append(args[0][:4].clone()))
    try:
        ours = sample_labels(net, y, torch.Generator().manual_seed(7), num_steps=6, cfg_scale=2.35,
                             cfg_interval=[0.3, 1.0], temperature=1.31).labels
    finally:
        hook.remove()
    ref_inputs = []
    ref = reference_sample(net, y, 6, 2.35, (0.3, 1.0), 1.31, torch.Generator().manual_seed(7), ref_inputs)
    assert len(seen) == len(ref_inputs) == 6
    # Exact although the two loops compute their logits differently (fused network, cond + uncond in one
    # batch, vs reference_logits, two passes; they agree to ~1e-5, see above): every draw is an argmax whose
    # top-2 gap (smallest over the 6 steps: 7.7e-4, measured) is well above what that can move it (~1e-4).
    for i, (z, rz) in enumerate(zip(seen, ref_inputs)):
        assert torch.equal(z, rz), f"step {i}: the network was fed another map than the reference's"
    assert torch.equal(ours, ref)


def official_file(tmp_path, net):
    """An official-format C2I checkpoint: Denoiser state dicts (``net.`` prefix) for the live and EMA weights."""
    sd = {f"net.{k}": v.clone() for k, v in net.state_dict().items()}
    ema = {k: v + 0.01 for k, v in sd.items()}
    path = tmp_path / "GRN_ind_tiny.pth"
    torch.save({"model": sd, "model_ema1": ema, "model_ema2": sd, "epoch": 599}, path)
    return path


def test_official_checkpoint_loads_and_converts(tmp_path):
    from grn.checkpoints import load_generator

    net = randomised("index", seed=2)
    path = official_file(tmp_path, net)
    loaded = load_official_c2i(path, "model", hbq_rounds=3)
    labels = torch.randint(0, 8, (2, 4, 8, 8))
    t, y = torch.tensor([0.2, 0.7]), torch.tensor([3, 10])
    with torch.no_grad():
        assert torch.allclose(loaded(labels, t, y), net(labels, t, y), atol=1e-6)
    cfg = infer_c2i_config({k[4:]: v for k, v in torch.load(path)["model"].items()}, hbq_rounds=3)
    assert (cfg["size"], cfg["latent_dim"], cfg["num_classes"], cfg["input_size"]) == ("tiny", 4, 10, 8)
    out = tmp_path / "converted.ckpt"
    torch.save(c2i_checkpoint(path, hbq_rounds=3), out)
    ema_net, hp = load_generator(out, ema="ema1")
    assert torch.allclose(ema_net.state_dict()["blocks.0.attn.qkv.weight"],
                          net.state_dict()["blocks.0.attn.qkv.weight"] + 0.01)
    with pytest.raises(KeyError, match="missing"):
        torch.save({"model": {}}, tmp_path / "bad.pth")
        c2i_checkpoint(tmp_path / "bad.pth")


def test_grn_b_official_key_names():
    """Names and shapes of facts §3.2 (GRN_B, GRN_ind, d = 16)."""
    with torch.device("meta"):
        sd = build_generator("grn_b", latent_dim=16, hbq_rounds=4, num_classes=1000, input_size=16).state_dict()
    expected = {
        "pos_embed": (1, 256, 768), "in_context_posemb": (1, 32, 768), "y_embedder.embedding_table.weight": (1001, 768),
        "x_embedder.proj1.weight": (128, 256, 1, 1), "x_embedder.proj2.weight": (768, 128, 1, 1),
        "blocks.0.attn.qkv.weight": (2304, 768), "blocks.0.attn.q_norm.weight": (64,),
        "blocks.0.mlp.w12.weight": (4096, 768), "blocks.0.mlp.w3.weight": (768, 2048),
        "blocks.0.adaLN_modulation.1.weight": (4608, 768), "final_layer.linear.weight": (256, 768),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert len([k for k in sd if k.startswith("blocks.0.")]) == 14  # norms 4, qkv 2, proj 2, mlp 4, adaLN 2


def _counting_loads(monkeypatch) -> list[dict]:
    """Replace torch.load by a wrapper that records each call's keyword arguments (the file is still read)."""
    calls, real = [], torch.load

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    return calls


def _converted_the_old_way(path, hbq_rounds):
    """What the conversion stored before it read the file once: a network built per weight set, the EMAs as
    EMA(net).state_dict() of the ``model_ema*`` networks."""
    from grn.models.ema import EMA

    live = load_official_c2i(path, "model", hbq_rounds=hbq_rounds)
    state = {f"net.{k}": v for k, v in live.state_dict().items()}
    for i, key in enumerate(("model_ema1", "model_ema2"), start=1):
        ema = EMA(load_official_c2i(path, key, hbq_rounds=hbq_rounds), 0.0)
        state.update({f"emas.ema{i}.{k}": v for k, v in ema.state_dict().items()})
    return state


def test_conversion_reads_the_file_once_memory_mapped_and_stores_what_it_did(tmp_path, monkeypatch):
    path = official_file(tmp_path, randomised("index", seed=3))
    expected = _converted_the_old_way(path, 3)
    calls = _counting_loads(monkeypatch)
    ckpt = c2i_checkpoint(path, tokenizer_ckpt="tok.ckpt", hbq_rounds=3)
    assert len(calls) == 1 and calls[0]["mmap"] and calls[0]["weights_only"]  # was four full reads
    state = ckpt["state_dict"]
    assert list(state) == list(expected)
    for key, want in expected.items():
        assert state[key].dtype == want.dtype and torch.equal(state[key], want), key
    assert ckpt["hyper_parameters"]["tokenizer_ckpt"] == "tok.ckpt" and ckpt["epoch"] == 599


def test_official_c2i_file_loads_directly_as_its_conversion_does(tmp_path, monkeypatch):
    """One policy for official files: load_generator takes the .pth itself; ema picks the weight set."""
    from grn.checkpoints import load_generator

    torch.manual_seed(4)  # M = 4, as released: a file does not say M, and direct loading assumes the released one
    path = official_file(tmp_path, build_generator("tiny", latent_dim=4, hbq_rounds=4, num_classes=10, input_size=8))
    converted = tmp_path / "converted.ckpt"
    torch.save(c2i_checkpoint(path), converted)
    for ema in (None, "ema1", "ema2"):
        calls = _counting_loads(monkeypatch)
        direct, hp = load_generator(path, ema=ema)
        assert len(calls) == 1 and calls[0]["mmap"]
        monkeypatch.undo()
        via_file, hp_file = load_generator(converted, ema=ema)
        assert hp["net"] == hp_file["net"] and hp["tokenizer_ckpt"] is None and not direct.training
        # the parameters: an EMA averages those (buffers, here pos_embed, come from the chosen set directly, and
        # from the live one after conversion; in the released files they are the same fixed sin-cos table)
        direct_params = dict(direct.named_parameters())
        for key, value in via_file.named_parameters():
            assert torch.equal(direct_params[key], value), (ema, key)
    with pytest.raises(KeyError, match="no EMA named 'ema7'"):
        load_generator(path, ema="ema7")
