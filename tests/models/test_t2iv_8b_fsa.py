"""GRN-8B and the FSA releases (official update §A, §B10, §C1-C2): exact sizes and the 407 official keys on the meta
device, grouped-query attention, strict loading of flat files and of the trainer envelope, the attention pattern
from the file name and back from a saved config, the fsa mask, the flash-attn varlen path, and parity of an
8B-shaped small network in fsa mode with a plain restatement of the official forward (tests/reference_t2iv.py)."""

import pytest
import torch
import torch.nn.functional as F

from grn.checkpoints import load_t2iv
from grn.checkpoints.official_t2iv import (
    attention_of_file,
    infer_t2iv_config,
    load_official_t2iv,
    t2iv_checkpoint,
    to_official_keys,
)
from grn.models.packing import FSA, PAD, TEXT, SampleSpec, packed_layout
from grn.models.t2iv import SelfAttention, VarlenAttention, build_t2iv

from reference_t2iv import official_shapes, reference_forward_fsa

# official update §A2: totals and parts, GRN_bit, d = 64, text 4096
SIZES = {"grn2b": (2_197_832_448, 77_861_632, 319), "grn8b": (7_890_859_520, 218_112_256, 407),
         "grn8b_gqa": (8_796_829_184, 243_278_080, 407)}
PARTS_8B = {"text_proj": 16_781_312, "word_embed": 2_101_248, "head": 2_101_760, "pt_embedder": 17_833_984}


def meta_net(size, **kw):
    with torch.device("meta"):
        return build_t2iv(size, latent_dim=64, hbq_rounds=4, text_dim=4096, **kw)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_parameter_counts_and_official_key_count(size):
    total, per_block, keys = SIZES[size]
    net = meta_net(size)
    assert sum(p.numel() for p in net.parameters()) == total
    assert sum(p.numel() for p in net.blocks[0].parameters()) == per_block
    assert len(to_official_keys(net.state_dict(), net.block_chunks)) == keys
    if size != "grn2b":
        for part, n in PARTS_8B.items():
            assert sum(p.numel() for p in getattr(net, part).parameters()) == n, part


@pytest.mark.parametrize("size, kv_dim, ffn", [("grn8b", 4096, 12288), ("grn8b_gqa", 1024, 16384)])
def test_8b_keys_and_shapes_equal_the_official_ones_and_load_strictly(size, kv_dim, ffn):
    shapes = official_shapes(4096, ffn, chunks=6, per_chunk=6, kv_dim=kv_dim)  # official update §A3
    assert len(shapes) == 407
    ours = {k: tuple(v.shape) for k, v in to_official_keys(meta_net(size).state_dict(), 6).items()}
    assert ours == shapes
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    cfg = infer_t2iv_config(state)  # kv heads from k_proj: 32 -> grn8b, 8 -> grn8b_gqa
    assert (cfg["size"], cfg["latent_dim"], cfg["text_dim"], cfg["attention"]) == (size, 64, 4096, "text_only")
    net = load_official_t2iv(state, attention="fsa")
    assert net.attention == "fsa" and net.num_kv_heads == (8 if size == "grn8b_gqa" else 32)
    assert sum(p.numel() for p in net.parameters()) == SIZES[size][0]


def test_attention_pattern_comes_from_the_release_file_name():
    for name in ("GRN_T2I_2B_FSA_251600.pth", "GRN_T2V_TITAN_FSA_sft10600_ema.pth", "GRN_T2I_titan_FSA_256x256.pth",
                 "/x/y/grn_t2v_fsa.pth"):
        assert attention_of_file(name) == "fsa", name
    for name in ("GRN_T2I_2B.pth", "GRN_T2V_2B.pth", "/fsa_runs/GRN_T2I_2B.pth", "GRN_T2I_FSAX.pth", {"a": 1}):
        assert attention_of_file(name) == "text_only", name


# -------------------------------------------------------------------------------- an 8B-shaped small network
HEADS, TEXT_DIM = 6, 24


def random_official_state(kv_heads, seed=0):
    """A 6-block, 3-chunk, 96-wide network (head_dim 16) in the official chunked layout, with weights large
    enough that every path (text -> visual under fsa, each k/v head) moves the logits."""
    torch.manual_seed(seed)
    net = build_t2iv("tiny", depth=6, hidden_size=96, num_heads=HEADS, num_kv_heads=kv_heads, mlp_hidden=160,
                     block_chunks=3, latent_dim=4, hbq_rounds=2, target="bits", text_dim=TEXT_DIM)
    state = {k: torch.randn_like(v) * (0.25 if v.dim() > 1 else 0.5) + (1.0 if "norm" in k else 0.0)
             for k, v in net.state_dict().items()}
    return to_official_keys(state, block_chunks=3)


def exact(fn, sd, *args, **kw):
    """The reference in float64 (weights, caption features, pt values), back to float32: what our float32
    network is compared with, so the tolerance covers our rounding only."""
    def f64(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.double()
        return [f64(v) for v in x] if isinstance(x, list) else x
    return fn({k: v.double() for k, v in sd.items()}, *map(f64, args), **kw).float()


def assert_parity(ours, ref):
    """Within 1e-5 of the logit scale (``max |ref|``, here ≈ 10): six float32 blocks with weights this large
    round to about 1e-6 relative (the naive float32 reference itself is 1.4e-5 from the float64 one at |logit|
    ≈ 10), while any layout or pattern error moves the logits by more than 1e-2 (checked below)."""
    scale = max(1.0, ref.abs().max().item())
    err = (ours - ref).abs().max().item()
    assert ours.shape == ref.shape and err <= 1e-5 * scale, (err, scale)


def flat(lab):
    return lab.permute(1, 2, 3, 0).reshape(-1, lab.shape[0])


@pytest.mark.parametrize("kv_heads", [HEADS, 2])  # GQA off and on (3 query heads per k/v head)
def test_fsa_forward_matches_the_official_formulation(kv_heads):
    sd = random_official_state(kv_heads)
    net = load_official_t2iv(sd, hbq_rounds=2, attention="fsa")
    cfg = infer_t2iv_config(sd, hbq_rounds=2, attention="fsa")
    assert cfg["block_chunks"] == 3 and cfg.get("num_kv_heads", HEADS) == kv_heads and cfg["attention"] == "fsa"
    specs = [SampleSpec(2, 3, 4, 5), SampleSpec(1, 4, 2, 3), SampleSpec(3, 2, 2, 4)]
    samples = [torch.randint(0, 2, (net.label_channels, s.frames, s.height, s.width)) for s in specs]
    texts = [torch.randn(s.text_len, TEXT_DIM) for s in specs]
    kps = torch.tensor([0.25, 0.9, 0.55])
    with torch.no_grad():
        ref = exact(reference_forward_fsa, sd, samples, texts, kps, heads=HEADS)
        layout = packed_layout(specs, rows=[[0, 1], [2]], row_length=50)  # two samples in a row, and padding
        ours = net.forward_layout(layout, torch.cat([flat(s) for s in samples]), kps, torch.cat(texts))
        assert ours.shape == ref.shape == (24 + 8 + 12, 8, 2)
        assert ref.abs().max() > 1.0  # logits of real size: a layout error cannot hide under the tolerance
        assert_parity(ours, ref)
        # the pattern matters at this weight scale: the same weights under text_only give other logits
        old = load_official_t2iv(sd, hbq_rounds=2, attention="text_only")
        other = old.forward_layout(layout, torch.cat([flat(s) for s in samples]), kps, torch.cat(texts))
        assert (other - ref).abs().max() > 1e-2
        # the batched API (same-shape samples, captions padded to the longest) gives the same logits
        same = [torch.randint(0, 2, (net.label_channels, 2, 2, 3)) for _ in range(3)]
        lens = torch.tensor([5, 2, 4])
        text = torch.randn(3, 5, TEXT_DIM)
        ref_b = exact(reference_forward_fsa, sd, same, [text[i, :n] for i, n in enumerate(lens)], kps, heads=HEADS)
        ours_b = net(torch.stack(same), kps, text, lens)  # [B, K, C, T, h, w]
        assert_parity(ours_b.permute(0, 3, 4, 5, 2, 1).reshape(-1, 8, 2), ref_b)


def test_i2v_training_layout_matches_the_official_formulation():
    """§B10: the official I2V training sequence [one-hot(mixed frames 1..T-1) | clean first frame | text | pt]
    with time rows 601… for the generated frames and 600 for the first is our T-frame map with the clean first
    frame in frame 0 (same positions, and fsa attention does not depend on the order)."""
    sd = random_official_state(2, seed=3)
    net = load_official_t2iv(sd, hbq_rounds=2, attention="fsa")
    c, frames, h, w = net.label_channels, 4, 3, 2
    clips = torch.randint(0, 2, (2, c, frames, h, w))  # frame 0 clean, frames 1.. the mixed map
    text, lens = torch.randn(2, 5, TEXT_DIM), torch.tensor([5, 3])
    kps = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        ref = exact(reference_forward_fsa, sd, [x[:, 1:] for x in clips], [text[0], text[1, :3]], kps, heads=HEADS,
                    first_frames=[x[:, :1] for x in clips])
        ours = net(clips, kps, text, lens)[:, :, :, 1:]  # the generated frames' logits
    assert_parity(ours.permute(0, 3, 4, 5, 2, 1).reshape(-1, c, 2), ref)


# -------------------------------------------------------------------------------- the fsa mask and its kernels
def test_fsa_mask_is_full_within_each_sample_only():
    specs = [SampleSpec(1, 2, 2, 3), SampleSpec(2, 2, 1, 2), SampleSpec(1, 1, 3, 1)]
    layout = packed_layout(specs, rows=[[0, 1], [2]], row_length=20)
    mask = layout.attention_mask(FSA)[:, 0]
    sid = layout.sample_id
    same = (sid[:, :, None] == sid[:, None, :]) & (sid[:, None, :] >= 0)
    pad_self = (sid < 0)[:, :, None] & torch.eye(20, dtype=torch.bool)
    assert torch.equal(mask, same | pad_self)
    text_q = layout.kind == TEXT
    old = layout.attention_mask()[:, 0]
    assert torch.equal(mask & ~text_q[:, :, None], old & ~text_q[:, :, None])  # only text queries differ
    assert bool((mask & ~old).any()) and not bool((old & ~mask).any())
    assert (layout.kind == PAD).sum() == 40 - sum(s.num_tokens for s in specs)


def test_varlen_segments_and_the_flash_path_equal_the_dense_mask():
    """flash-attn cannot run on a CPU: a stand-in with its signature (SDPA per segment, GQA by repeating k/v)
    checks the gather / scatter around it and the segments it is given."""
    specs = [SampleSpec(1, 2, 2, 3), SampleSpec(2, 1, 2, 2), SampleSpec(1, 1, 3, 1)]
    layout = packed_layout(specs, rows=[[0, 1], [2]], row_length=20)
    cu, longest, index = layout.varlen_segments()
    assert cu.tolist() == [0, 8, 15, 20] and longest == 8 and cu.dtype == torch.int32
    assert torch.equal(layout.sample_id.reshape(-1)[index], torch.tensor([0] * 8 + [1] * 7 + [2] * 5))

    def fake_flash(q, k, v, cu_q, cu_k, max_q, max_k):
        out = torch.empty_like(q)
        for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            rep = q.shape[1] // k.shape[1]
            qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)))
            out[a:b] = F.scaled_dot_product_attention(qs, ks, vs).transpose(0, 1)
        return out

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 20, 8), torch.randn(2, 2, 20, 8), torch.randn(2, 2, 20, 8)
    seg = VarlenAttention(layout)
    got = SelfAttention._varlen(fake_flash, q, k, v, seg).view(2, 20, 4, 8)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=seg.dense(), enable_gqa=True).transpose(1, 2)
    real = layout.sample_id >= 0
    torch.testing.assert_close(got[real], want[real])
    assert torch.equal(got[~real], torch.zeros_like(got[~real]))


def test_fsa_without_padding_needs_no_mask_and_the_caption_cache_is_refused():
    torch.manual_seed(0)
    net = build_t2iv("tiny", latent_dim=4, hbq_rounds=2, text_dim=16, attention="fsa").eval()
    lab = torch.randint(0, 2, (2, net.label_channels, 2, 3))
    from grn.models.packing import batched_layout

    assert net.attention_mask(batched_layout(1, 2, 3, torch.tensor([4, 4]))) is None  # full attention per row
    assert net.attention_mask(batched_layout(1, 2, 3, torch.tensor([4, 2]))) is not None
    assert not net.caption_kv_static
    with pytest.raises(ValueError, match="cannot be cached"):
        net.text_cache(torch.randn(2, 4, 16), torch.tensor([4, 4]))
    with torch.no_grad():  # text attends the visual tokens: the caption's path depends on the map
        a = net(lab, torch.tensor([0.3, 0.3]), torch.randn(2, 4, 16), torch.tensor([4, 4]))
        assert a.shape == (2, 2, net.label_channels, 2, 3)
    with pytest.raises(ValueError, match="attention pattern"):
        build_t2iv("tiny", latent_dim=4, hbq_rounds=2, attention="causal")
    with pytest.raises(ValueError, match="num_kv_heads"):
        build_t2iv("tiny", latent_dim=4, hbq_rounds=2, num_kv_heads=3)


# -------------------------------------------------------------------------------- files: envelope, name, reload
def test_trainer_envelope_loads_the_ema_and_fsa_files_reload_with_their_pattern(tmp_path):
    live, ema = random_official_state(2, seed=1), random_official_state(2, seed=2)
    envelope = {"trainer": {"gpt_fsdp": live, "gpt_ema_fsdp": ema, "gpt_fsdp_opt": None}, "g_it": 10, "epoch": 1}
    path = tmp_path / "GRN_T2V_TITAN_FSA_sft10600_ema.pth"
    torch.save(envelope, path)
    net, hp = load_t2iv(path)  # ema="ema1": the envelope's EMA
    assert net.attention == "fsa" and hp["net"]["attention"] == "fsa" and hp["net"]["num_kv_heads"] == 2
    key = "blocks.4.attn.k_proj.weight"
    assert torch.equal(net.state_dict()[key], ema["block_chunks.2.module.0.attn.k_proj.weight"])
    live_net, _ = load_t2iv(path, ema=None)
    assert torch.equal(live_net.state_dict()[key], live["block_chunks.2.module.0.attn.k_proj.weight"])
    # a flat file without FSA in its name: the old pattern
    torch.save(live, tmp_path / "GRN_T2V_2B.pth")
    assert load_t2iv(tmp_path / "GRN_T2V_2B.pth")[0].attention == "text_only"
    # converted, then reloaded from the stored config: the pattern travels with the checkpoint
    torch.save(t2iv_checkpoint(path, hbq_rounds=2), tmp_path / "t2v.ckpt")
    again, hp2 = load_t2iv(tmp_path / "t2v.ckpt")
    assert again.attention == "fsa" and hp2["net"]["attention"] == "fsa"
    assert torch.equal(again.state_dict()[key], net.state_dict()[key])
    with pytest.raises(ValueError, match="gpt_fsdp"):
        load_official_t2iv({"trainer": {"gpt_ema": live}})


def test_flex_backend_matches_sdpa_under_fsa():
    pytest.importorskip("torch.nn.attention.flex_attention")
    import warnings

    sd = random_official_state(2, seed=4)
    sdpa = load_official_t2iv(sd, hbq_rounds=2, attention="fsa")
    flex = load_official_t2iv(sd, hbq_rounds=2, attention="fsa", attn_backend="flex")
    specs = [SampleSpec(1, 2, 3, 3), SampleSpec(2, 2, 2, 2)]
    layout = packed_layout(specs, rows=[[0, 1]], row_length=40)
    labels = torch.randint(0, 2, (14, sdpa.label_channels))
    text, kp = torch.randn(5, TEXT_DIM), torch.tensor([0.4, 0.7])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex attention on CPU warns that it is not compiled
        a = sdpa.forward_layout(layout, labels, kp, text)
        b = flex.forward_layout(layout, labels, kp, text)
    assert_parity(b, a)


# -------------------------------------------------------------------------------- official first-frame I2V (§B)
def test_first_frame_layout_puts_the_condition_after_the_generated_frames_at_time_600():
    from grn.models.packing import FIRST, PT, VISUAL, batched_layout

    t, h, w = 2, 2, 3
    layout = batched_layout(t, h, w, torch.tensor([4, 2]), first_frame=True)
    n_gen, n_first = t * h * w, h * w
    kind, pos = layout.kind[0], layout.positions[0]
    assert kind[:n_gen].eq(VISUAL).all() and kind[n_gen:n_gen + n_first].eq(FIRST).all()
    assert kind[n_gen + n_first] == PT and pos[n_gen + n_first].tolist() == [512.0, 0.0, 0.0]
    assert pos[:n_gen, 0].tolist() == [601.0] * 6 + [602.0] * 6  # generated frame f at 600 + f, f >= 1
    assert pos[n_gen:n_gen + n_first, 0].tolist() == [600.0] * 6  # the first frame at 600
    assert torch.equal(pos[n_gen:n_gen + n_first, 1:], pos[:n_first, 1:])  # the same (h, w) grid
    assert layout.first_index.tolist() == [n_gen + i for i in range(n_first)] + \
        [layout.shape[1] + n_gen + i for i in range(n_first)]
    assert layout.visual_index.numel() == 2 * n_gen  # logits only for the generated frames
    plain = batched_layout(t + 1, h, w, torch.tensor([4, 2]))  # a T2V clip: the same positions, reordered
    ours = torch.cat([pos[n_gen:n_gen + n_first], pos[:n_gen]])
    assert torch.equal(ours, plain.positions[0, : n_gen + n_first])
    specs = [SampleSpec(2, 2, 3, 3, first_frame=True), SampleSpec(1, 2, 2, 2)]
    packed = packed_layout(specs, rows=[[0, 1]], row_length=40)
    assert packed.first_index.tolist() == list(range(12, 18)) and (packed.kind == FIRST).sum() == 6
    assert packed.positions[0, 12:18, 0].eq(600).all() and packed.positions[0, :12, 0].min() == 601


@pytest.mark.parametrize("kv_heads", [HEADS, 2])
def test_i2v_inference_pass_matches_the_official_formulation(kv_heads):
    """§B5-B9: both guidance branches hold the clean first frame after the generated frames (time 600, the
    generated at 601…), the pt value is given as is, no logits come from the first frame; our sampler's network
    call (TextConditionedNet over the T-frame map with frame 0 given) equals the plain restatement."""
    from grn.sampling.guidance import apply_guidance
    from grn.sampling.text import TextConditionedNet, pad_texts

    from reference_t2iv import reference_i2v_guided_logits

    sd = random_official_state(kv_heads, seed=5)
    net = load_official_t2iv(sd, hbq_rounds=2, attention="fsa")
    assert net.i2v_mode == "first_frame"  # the official files are sampled in the official form
    c, gen_t, h, w = net.label_channels, 3, 2, 3
    g = torch.Generator().manual_seed(9)
    maps = torch.randint(0, 2, (2, c, gen_t + 1, h, w), generator=g)  # frame 0: each sample's first frame
    cond, uncond = [torch.randn(n, TEXT_DIM, generator=g) for n in (5, 3)], torch.randn(4, TEXT_DIM, generator=g)
    pts = torch.tensor([0.0, 0.43])
    feats, lens = pad_texts([*cond, uncond])
    call = TextConditionedNet(net, feats, lens, first_frame_tokens=True)
    with torch.no_grad():
        out = call(torch.cat([maps, maps]), torch.cat([pts, pts]), torch.tensor([0, 1, 2, 2]))
        assert out.shape == (4, 2, c, gen_t + 1, h, w) and out[:, :, :, 0].eq(0).all()  # frame 0: unread
        ours = apply_guidance(out[:2].float(), out[2:].float(), torch.tensor([3.0, 3.0]))[:, :, :, 1:]
        for i in range(2):
            ref = exact(reference_i2v_guided_logits, sd, maps[i, :, 1:], maps[i, :, :1], cond[i], uncond,
                        pts[i], 3.0, heads=HEADS)
            assert ref.abs().max() > 1.0
            assert_parity(ours[i].permute(2, 3, 4, 1, 0).reshape(-1, c, 2), ref)
            # layout errors are visible at this scale: the generated frames from 600 (no t_offset), or the
            # unconditional branch without the first frame, give other logits; the T-frame map with the clean
            # first frame in frame 0 gives the same ones (same tokens and positions, another order)
            one = dict(heads=HEADS, first_frames=[maps[i, :, :1]])
            gen, kp = [maps[i, :, 1:]], pts[i:i + 1]
            cond_ref = exact(reference_forward_fsa, sd, gen, [cond[i]], kp, **one)
            no_offset = exact(reference_forward_fsa, sd, gen, [cond[i]], kp, generated_t_offset=0, **one)
            assert (no_offset - cond_ref).abs().max() > 1e-2
            no_first = exact(reference_forward_fsa, sd, gen, [uncond], kp, heads=HEADS)
            assert (no_first + 3.0 * (cond_ref - no_first) - ref).abs().max() > 1e-2
            t_frames = exact(reference_forward_fsa, sd, [maps[i]], [cond[i]], kp, heads=HEADS)
            assert_parity(t_frames[h * w:], cond_ref)


def test_packed_i2v_and_plain_samples_match_the_official_formulation():
    sd = random_official_state(2, seed=6)
    net = load_official_t2iv(sd, hbq_rounds=2, attention="fsa")
    c = net.label_channels
    specs = [SampleSpec(2, 2, 3, 4, first_frame=True), SampleSpec(2, 2, 2, 3), SampleSpec(1, 3, 2, 2, first_frame=True)]
    g = torch.Generator().manual_seed(2)
    samples = [torch.randint(0, 2, (c, s.frames, s.height, s.width), generator=g) for s in specs]
    firsts = [torch.randint(0, 2, (c, 1, s.height, s.width), generator=g) if s.first_frame else None for s in specs]
    texts = [torch.randn(s.text_len, TEXT_DIM, generator=g) for s in specs]
    kps = torch.tensor([0.2, 0.6, 0.8])
    layout = packed_layout(specs, rows=[[0, 1], [2]], row_length=50)
    with torch.no_grad():
        ref = exact(reference_forward_fsa, sd, samples, texts, kps, heads=HEADS, first_frames=firsts)
        ours = net.forward_layout(layout, torch.cat([flat(s) for s in samples]), kps, torch.cat(texts),
                                  first_labels=torch.cat([flat(f) for f in firsts if f is not None]))
        assert_parity(ours, ref)
        with pytest.raises(ValueError, match="first_labels"):
            net.forward_layout(layout, torch.cat([flat(s) for s in samples]), kps, torch.cat(texts))


def test_first_frame_forward_equals_the_t_frame_map_and_the_caption_cache():
    """The official form sees the same tokens at the same positions as a T-frame map whose frame 0 is clean
    (attention does not depend on the order), under both patterns; the text_only caption cache gives the same."""
    for attention in ("text_only", "fsa"):
        torch.manual_seed(0)
        net = build_t2iv("tiny", latent_dim=4, hbq_rounds=2, text_dim=16, attention=attention).eval()
        lab = torch.randint(0, 2, (2, net.label_channels, 3, 2, 3))
        text, lens, kp = torch.randn(2, 5, 16), torch.tensor([5, 3]), torch.tensor([0.3, 0.6])
        with torch.no_grad():
            first = net(lab[:, :, 1:], kp, text, lens, first_frame=lab[:, :, :1])
            assert first.shape == (2, 2, net.label_channels, 2, 2, 3)
            torch.testing.assert_close(first, net(lab, kp, text, lens)[:, :, :, 1:], atol=1e-5, rtol=0)
            if attention == "text_only":
                cached = net.forward_cached(lab[:, :, 1:], kp, net.text_cache(text, lens),
                                            first_frame=lab[:, :, :1])
                torch.testing.assert_close(cached, first, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="first_frame must be"):
            net(lab[:, :, 1:], kp, text, lens, first_frame=lab[:1, :, :1])
    with pytest.raises(ValueError, match="i2v_mode"):
        build_t2iv("tiny", latent_dim=4, hbq_rounds=2, i2v_mode="last_frame")
