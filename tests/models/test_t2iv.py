"""T2I/T2V network: exact sizes, official key names, embedding input = official one-hot, 3-D RoPE positions,
the packed attention mask (no leak between samples, padding never attended), shapes and errors."""

import pytest
import torch
import torch.nn.functional as F

from grn.models.packing import PAD, PT, TEXT, VISUAL, SampleSpec, batched_layout, pack_by_budget, packed_layout
from grn.models.rope3d import axis_pairs, normalised_extent, visual_positions
from grn.models.t2iv import build_t2iv
from grn.checkpoints.official_t2iv import to_official_keys

# facts §4.1: GRN2b parts
GRN2B_PARTS = {"blocks": 2_180_125_696, "text_proj": 9_439_488, "word_embed": 1_181_952, "head": 1_182_464,
               "pt_embedder": 5_902_848}


def meta_net(size, **kw):
    with torch.device("meta"):
        return build_t2iv(size, latent_dim=64, hbq_rounds=4, text_dim=4096, **kw)


def test_grn2b_has_exactly_the_official_parameter_count_and_keys():
    net = meta_net("grn2b", target="bits")
    assert sum(p.numel() for p in net.parameters()) == 2_197_832_448
    for part, n in GRN2B_PARTS.items():
        assert sum(p.numel() for p in getattr(net, part).parameters()) == n, part
    assert sum(p.numel() for p in net.blocks[0].parameters()) == 77_861_632
    official = to_official_keys(net.state_dict(), block_chunks=net.block_chunks)
    assert len(official) == 319
    shapes = {k: tuple(v.shape) for k, v in official.items()}
    assert shapes["word_embed.weight"] == (2304, 512) and shapes["head.proj.weight"] == (512, 2304)
    assert shapes["block_chunks.6.module.3.attn.q_norm.weight"] == (128,)
    assert shapes["block_chunks.0.module.0.mlp.gate_proj.weight"] == (8192, 2304)
    assert {"head.norm.weight", "pt_embedder.mlp.0.weight", "pt_embedder.mlp.2.bias", "text_proj.bias",
            "block_chunks.3.module.1.input_layernorm.weight",
            "block_chunks.3.module.1.post_attention_layernorm.weight",
            "block_chunks.3.module.1.attn.o_proj.weight"} <= set(official)
    assert not any(k.endswith("proj.bias") and "block_chunks" in k for k in official)  # qkvo / mlp: no bias


def test_debug_size_and_grn_ind_widths():
    assert sum(p.numel() for p in meta_net("grn0b", target="bits").parameters()) == 18_227_200
    ind = meta_net("grn2b", target="index")  # GRN_ind: d·2^M inputs and outputs (head lvl = 2^M)
    assert ind.word_embed.weight.shape == (2304, 64 * 16) and ind.head.proj.weight.shape == (64 * 16, 2304)
    assert (ind.label_channels, ind.num_levels) == (64, 16)


def tiny(target="bits", seed=0, **kw):
    torch.manual_seed(seed)
    net = build_t2iv("tiny", latent_dim=4, hbq_rounds=2, target=target, text_dim=16, **kw)
    with torch.no_grad():
        for p in net.parameters():  # larger random weights: every path must carry signal
            p.normal_(0, 0.2)
    return net.eval()


@pytest.mark.parametrize("target", ["bits", "index"])
def test_embedding_lookup_equals_official_channel_major_one_hot(target):
    net = tiny(target)
    c, k = net.label_channels, net.num_levels
    labels = torch.randint(0, k, (50, c))
    one_hot = F.one_hot(labels, k).reshape(50, c * k).float()  # channel-major: input c·K + class (facts §1.4)
    ref = one_hot @ net.word_embed.weight.t() + net.word_embed.bias
    assert torch.allclose(net.embed_labels(labels), ref, atol=1e-5)


def test_rope3d_split_and_resolution_normalised_positions():
    assert axis_pairs(128) == (21, 21, 22)
    assert normalised_extent(1.0) == (129, 129)
    pos = visual_positions(1, 64, 64)
    assert pos[:64, 2].tolist() == [round(j * 129 / 64) for j in range(64)]  # 0, 2, ..., 127
    assert pos[:, 2].max() == 127 and pos[:, 1].max() == 127
    small = visual_positions(2, 16, 16)
    assert small[:, 2].max() > 110  # a 16-wide map spans the same range in steps of ~8
    assert set(small[:, 0].tolist()) == {600.0, 601.0}


def test_masks_keep_samples_apart_and_never_attend_padding():
    specs = [SampleSpec(1, 2, 2, 3), SampleSpec(2, 2, 1, 2), SampleSpec(1, 1, 3, 1)]
    layout = packed_layout(specs, rows=[[0, 1], [2]], row_length=20)
    mask = layout.attention_mask()[:, 0]
    sid, kind = layout.sample_id, layout.kind
    for b in range(2):
        for q in range(20):
            for key in range(20):
                allowed = bool(mask[b, q, key])
                if sid[b, q] < 0:  # padding query: only itself
                    assert allowed == (q == key)
                    continue
                if sid[b, key] < 0 or sid[b, key] != sid[b, q]:
                    assert not allowed  # other samples and padding are never attended
                elif kind[b, q] == TEXT:
                    assert allowed == (kind[b, key] == TEXT)  # text sees only its own caption
                else:
                    assert allowed  # visual / pt see their whole sample
    assert layout.visual_sample_id.tolist() == [0] * 4 + [1] * 4 + [2] * 3
    counts = [(kind == v).sum().item() for v in (VISUAL, PT, TEXT, PAD)]
    assert counts == [4 + 4 + 3, 3, 6, 40 - 4 - 4 - 3 - 3 - 6]


def test_packed_samples_match_separate_runs_and_padding_does_not_leak():
    net = tiny()
    specs = [SampleSpec(2, 2, 3, 4), SampleSpec(1, 3, 3, 2)]
    labels = [torch.randint(0, 2, (net.label_channels, s.frames, s.height, s.width)) for s in specs]
    texts = [torch.randn(s.text_len, 16) for s in specs]
    kp = torch.tensor([0.3, 0.8])

    def flat(i):
        return labels[i].permute(1, 2, 3, 0).reshape(-1, net.label_channels)

    with torch.no_grad():
        pack = packed_layout(specs, rows=[[0, 1]], row_length=40)  # one row, 8 slots of padding
        packed = net.forward_layout(pack, torch.cat([flat(0), flat(1)]), kp, torch.cat(texts))
        alone = [net.forward_layout(packed_layout([s]), flat(i), kp[i : i + 1], texts[i]) for i, s in enumerate(specs)]
        assert torch.allclose(packed, torch.cat(alone), atol=1e-5)
        # changing sample 1 leaves sample 0 exactly as it was
        other = net.forward_layout(pack, torch.cat([flat(0), 1 - flat(1)]), kp * torch.tensor([1.0, 0.1]),
                                   torch.cat([texts[0], torch.randn(2, 16)]))
        n0 = specs[0].num_visual
        assert torch.equal(other[:n0], packed[:n0]) and not torch.allclose(other[n0:], packed[n0:])
        # batched API: caption padding beyond text_lens is never read
        lab = torch.randint(0, 2, (2, net.label_channels, 2, 2, 2))
        text = torch.randn(2, 6, 16)
        lens = torch.tensor([6, 3])
        base = net(lab, kp, text, lens)
        noisy = text.clone()
        noisy[1, 3:] = 1e3
        assert torch.equal(net(lab, kp, noisy, lens), base)


def test_conditioning_reaches_the_output_and_shapes():
    net = tiny()
    lab = torch.randint(0, 2, (2, net.label_channels, 3, 4))
    text, lens = torch.randn(2, 5, 16), torch.tensor([5, 4])
    with torch.no_grad():
        out = net(lab, torch.tensor([0.2, 0.6]), text, lens)
        assert out.shape == (2, 2, net.label_channels, 3, 4) and out.dtype == torch.float32
        assert not torch.allclose(out, net(lab, torch.tensor([0.9, 0.6]), text, lens))
        assert not torch.allclose(out, net(lab, torch.tensor([0.2, 0.6]), torch.randn(2, 5, 16), lens))
        video = net(lab.unsqueeze(2).expand(-1, -1, 3, -1, -1), torch.tensor([0.2, 0.6]), text, lens)
        assert video.shape == (2, 2, net.label_channels, 3, 3, 4)
    with pytest.raises(ValueError, match="labels must be"):
        net(torch.zeros(2, 3, 3, 4, dtype=torch.long), torch.rand(2), text, lens)
    with pytest.raises(ValueError, match="text must be"):
        net(lab, torch.rand(2), text, torch.tensor([6, 1]))
    with pytest.raises(ValueError, match="unknown T2I/T2V size"):
        build_t2iv("huge", latent_dim=4, hbq_rounds=2)


def test_batched_layout_equals_packed_layout_one_per_row():
    lens = torch.tensor([3, 1, 2])
    a = batched_layout(2, 2, 3, lens)
    b = packed_layout([SampleSpec(2, 2, 3, int(n)) for n in lens], row_length=a.shape[1])
    for field in ("sample_id", "kind", "positions", "visual_index", "pt_index", "text_index"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_pack_by_budget_is_greedy_within_budget_and_counts_oversize():
    counts = [5, 4, 3, 12, 2, 6, 6]
    rows, skipped = pack_by_budget(counts, budget=10)
    assert skipped == [3]
    assert rows == [[0, 1], [2, 4], [5], [6]]
    assert all(sum(counts[i] for i in r) <= 10 for r in rows)
    with pytest.raises(ValueError, match="row_length"):
        packed_layout([SampleSpec(1, 2, 2, 3)], row_length=5)


def test_training_step_backpropagates_through_a_pack():
    net = tiny()
    net.train()
    specs = [SampleSpec(1, 2, 2, 3), SampleSpec(2, 1, 2, 2)]
    layout = packed_layout(specs, rows=[[0, 1]])
    labels = torch.randint(0, 2, (8, net.label_channels))
    logits = net.forward_layout(layout, labels, torch.rand(2), torch.randn(5, 16))
    F.cross_entropy(logits.transpose(1, 2), labels).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_flex_backend_matches_sdpa():
    pytest.importorskip("torch.nn.attention.flex_attention")
    import warnings

    sdpa = tiny()
    flex = tiny(attn_backend="flex")
    flex.load_state_dict(sdpa.state_dict())
    specs = [SampleSpec(1, 2, 3, 3), SampleSpec(2, 2, 2, 2)]
    layout = packed_layout(specs, rows=[[0, 1]], row_length=40)
    labels = torch.randint(0, 2, (14, sdpa.label_channels))
    text, kp = torch.randn(5, 16), torch.tensor([0.4, 0.7])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex attention on CPU warns that it is not compiled
        a = sdpa.forward_layout(layout, labels, kp, text)
        b = flex.forward_layout(layout, labels, kp, text)
    assert torch.allclose(a, b, atol=1e-5)


def test_cached_caption_keys_values_give_the_same_logits():
    net = tiny()
    lab = torch.randint(0, 2, (3, net.label_channels, 2, 3, 2))
    text, lens, kp = torch.randn(3, 6, 16), torch.tensor([6, 2, 4]), torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        full = net(lab, kp, text, lens)
        cache = net.text_cache(text, lens)
        assert torch.allclose(net.forward_cached(lab, kp, cache.select(torch.arange(3))), full, atol=1e-5)
        # rows in another order / subset; equal-length captions need no mask at all
        ids = torch.tensor([2, 0])
        assert torch.allclose(net.forward_cached(lab[ids], kp[ids], cache.select(ids)), full[ids], atol=1e-5)
        one = net.forward_cached(lab[:1, :, 0], kp[:1], cache.select(torch.tensor([0])))  # image labels
        assert torch.allclose(one, net(lab[:1, :, 0], kp[:1], text[:1], lens[:1]), atol=1e-5)
