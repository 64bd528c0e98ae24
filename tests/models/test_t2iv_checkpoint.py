"""Official T2I/T2V weights: the 319-key GRN2b layout loads strictly, and a straightforward re-statement of the
official forward (one-hot input, the official sequence order and segment mask, naive attention, RoPE tables read
like the official ones) gives our logits within 1e-5 with random weights in the official layout."""

import pytest
import torch

from grn.checkpoints.official_t2iv import (
    from_official_keys,
    infer_t2iv_config,
    load_official_t2iv,
    t2iv_checkpoint,
    to_official_keys,
)
from grn.models.packing import SampleSpec, packed_layout
from grn.models.t2iv import build_t2iv

from reference_t2iv import official_shapes, reference_forward_old
from script_loader import load_script


def official_grn2b_shapes():
    """The released GRN2b state dict's names and shapes (facts §4.1 / §4.7): 7 chunks of 4 blocks."""
    return official_shapes(2304, 8192, chunks=7, per_chunk=4)


def test_synthetic_official_grn2b_state_dict_loads_strictly():
    shapes = official_grn2b_shapes()
    assert len(shapes) == 319
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    cfg = infer_t2iv_config(state)
    assert (cfg["size"], cfg["latent_dim"], cfg["hbq_rounds"], cfg["target"], cfg["text_dim"]) == \
        ("grn2b", 64, 4, "bits", 4096)
    net = load_official_t2iv(state)  # strict: every name and shape must match
    assert sum(p.numel() for p in net.parameters()) == 2_197_832_448
    assert set(to_official_keys(net.state_dict(), 7)) == set(shapes)
    bad = dict(state)
    bad.pop("head.norm.weight")
    with pytest.raises(RuntimeError, match="head.norm.weight"):
        load_official_t2iv(bad)


def test_missing_official_file_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="GRN_T2I_2B.pth") as err:
        load_official_t2iv(tmp_path / "GRN_T2I_2B.pth")
    assert "\n" not in str(err.value)


def random_official_state(seed=0):
    """A tiny network's weights, random, in the official chunked layout (2 chunks of 1 block)."""
    torch.manual_seed(seed)
    net = build_t2iv("tiny", latent_dim=4, hbq_rounds=2, target="bits", text_dim=16, block_chunks=2)
    state = {k: torch.randn_like(v) * (0.3 if v.dim() > 1 else 0.5) + (1.0 if "norm" in k else 0.0)
             for k, v in net.state_dict().items()}
    return to_official_keys(state, block_chunks=2)


def test_forward_matches_the_official_formulation():
    sd = random_official_state()
    net = load_official_t2iv(sd, hbq_rounds=2)
    assert net.block_chunks == 1 and len(net.blocks) == 2  # tiny size; chunks only name official keys
    specs = [SampleSpec(2, 3, 4, 5), SampleSpec(1, 4, 2, 3)]
    samples = [torch.randint(0, 2, (net.label_channels, s.frames, s.height, s.width)) for s in specs]
    texts = [torch.randn(s.text_len, 16) for s in specs]
    kps = torch.tensor([0.25, 0.9])
    with torch.no_grad():
        ref = reference_forward_old(sd, samples, texts, kps)
        layout = packed_layout(specs, rows=[[0, 1]], row_length=60)
        labels = torch.cat([s.permute(1, 2, 3, 0).reshape(-1, net.label_channels) for s in samples])
        ours = net.forward_layout(layout, labels, kps, torch.cat(texts))
    assert ours.shape == ref.shape == (24 + 8, 8, 2)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5), (ours - ref).abs().max()


def test_key_renaming_round_trips_and_checkpoint_wraps_weights(tmp_path):
    sd = random_official_state(seed=1)
    ours = from_official_keys(sd)
    assert "blocks.1.attn.q_proj.weight" in ours and to_official_keys(ours, 2) == sd
    path = tmp_path / "GRN_T2I_tiny.pth"
    torch.save(sd, path)
    ckpt = t2iv_checkpoint(path, hbq_rounds=2)
    assert ckpt["hyper_parameters"]["net"]["latent_dim"] == 4
    assert set(ckpt["state_dict"]) == {f"net.{k}" for k in ours}
    script = vars(load_script("convert_official"))
    script["main"]([str(path), str(tmp_path / "t2i.ckpt"), "--hbq-rounds", "2"])  # kind detected: t2iv
    out = torch.load(tmp_path / "t2i.ckpt", weights_only=True)
    assert out["hyper_parameters"]["net"]["target"] == "bits"
    assert torch.equal(out["state_dict"]["net.blocks.1.mlp.up_proj.weight"],
                       sd["block_chunks.1.module.0.mlp.up_proj.weight"])


def test_official_file_loads_directly_and_converted_with_any_ema(tmp_path):
    """One policy for official files: load_t2iv takes the .pth itself; its conversion holds final weights (no EMAs),
    so it loads with the default ema as an export does."""
    from grn.checkpoints import load_t2iv

    sd = random_official_state(seed=2)
    path = tmp_path / "GRN_T2I_tiny.pth"
    torch.save(sd, path)
    direct, hp = load_t2iv(path)
    assert not direct.training and hp["net"] == infer_t2iv_config(sd) and hp["tokenizer_ckpt"] is None
    torch.save(t2iv_checkpoint(path), tmp_path / "t2i.ckpt")
    converted, hp_file = load_t2iv(tmp_path / "t2i.ckpt")  # ema="ema1", and the file has no EMA: final weights
    assert hp_file["net"] == hp["net"]
    reference = load_official_t2iv(sd).state_dict()
    for key, value in converted.state_dict().items():
        assert torch.equal(direct.state_dict()[key], value) and torch.equal(reference[key], value), key
