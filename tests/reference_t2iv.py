"""Plain restatements of the official T2I/T2V forward, written from the facts (grn_facts.md §1.4, §4.1-4.3 and
official_update.md §A3, §B6, §B10, §C1-C2), for parity tests of :class:`grn.models.t2iv.T2IVNet`.

The functions run in the dtype of the state dict: give float64 weights and inputs for a reference that is exact
to well below float32 rounding (the RoPE angles stay float32, as the official tables). Everything here is
deliberately naive: one-hot inputs, RoPE tables read like the official ones, materialised
attention scores, ``repeat_kv`` for grouped-query attention, Python loops over samples. Weights come as an
official-layout state dict (``block_chunks.{c}.module.{j}.…``).

* :func:`reference_forward_old`: the old release's packed training sequence
  ``[vis₁, pt₁, vis₂, pt₂, …, text₁, text₂, …, pad]`` with the segment mask (text sees only its caption).
* :func:`reference_forward_fsa`: the FSA release's sequence, per sample ``[vis_i | (first frame) | text_i | pt_i]``
  concatenated without padding, full attention within each sample (cu_seqlens); with a first frame the I2V
  training layout (§B10): generated frames at time rows 601…, the clean first frame at 600.
* :func:`reference_i2v_guided_logits`: one step of the official I2V sampler's network pass (§B5-B9): the
  conditional and the unconditional branch ``[generated | first frame | text | pt]`` as one varlen batch, both
  holding the first frame, the guided logits of the generated tokens.
"""

import math

import torch
import torch.nn.functional as F

from grn.models.rope3d import nearest_template, normalised_extent


def official_shapes(d, ffn, chunks, per_chunk, kv_dim=None, hd=128):
    """An official GRN_bit (d = 64, M = 4) state dict's names and shapes, written out from the facts (GRN2b:
    grn_facts §4.1 / §4.7; GRN8b: official_update §A3): ``d`` width, ``ffn`` MLP width, ``chunks × per_chunk``
    blocks, ``kv_dim`` the k/v projection height (default d; 1024 for the 8-KV-head 8B)."""
    kv_dim = d if kv_dim is None else kv_dim
    shapes = {"text_proj.weight": (d, 4096), "text_proj.bias": (d,), "word_embed.weight": (d, 512),
              "word_embed.bias": (d,), "head.proj.weight": (512, d), "head.proj.bias": (512,),
              "head.norm.weight": (d,), "pt_embedder.mlp.0.weight": (d, 256), "pt_embedder.mlp.0.bias": (d,),
              "pt_embedder.mlp.2.weight": (d, d), "pt_embedder.mlp.2.bias": (d,)}
    for c in range(chunks):
        for j in range(per_chunk):
            p = f"block_chunks.{c}.module.{j}."
            shapes.update({p + "attn.q_proj.weight": (d, d), p + "attn.o_proj.weight": (d, d),
                           p + "attn.k_proj.weight": (kv_dim, d), p + "attn.v_proj.weight": (kv_dim, d),
                           p + "attn.q_norm.weight": (hd,), p + "attn.k_norm.weight": (hd,),
                           p + "mlp.gate_proj.weight": (ffn, d), p + "mlp.up_proj.weight": (ffn, d),
                           p + "mlp.down_proj.weight": (d, ffn), p + "input_layernorm.weight": (d,),
                           p + "post_attention_layernorm.weight": (d,)})
    return shapes


def ref_rope_tables(head_dim, frames_max=8, hw_max=225):
    pairs = head_dim // 2
    n = pairs // 3
    inv_f = 1.0 / (10000.0 ** (torch.arange(n).float() / n))
    inv_l = 1.0 / (10000.0 ** (torch.arange(pairs - 2 * n).float() / (pairs - 2 * n)))
    fr = torch.outer(torch.arange(600 + frames_max).float(), inv_f)
    hh = torch.outer(torch.arange(hw_max).float(), inv_f)
    ww = torch.outer(torch.arange(hw_max).float(), inv_l)
    return fr, hh, ww


def ref_angles_visual(tabs, t, ph, pw, t_offset=0):
    """Angles of a ``t × ph × pw`` latent whose first frame is time row ``600 + t_offset`` (official
    ``get_visual_rope_embeds(..., t_offset)``)."""
    fr, hh, ww = tabs
    uph, upw = normalised_extent(nearest_template(ph / pw))
    hi = (torch.arange(ph) * (uph / ph)).round().int()
    wi = (torch.arange(pw) * (upw / pw)).round().int()
    f0 = 600 + t_offset
    a = torch.cat([fr[f0 : f0 + t, None, None].expand(t, ph, pw, -1), hh[hi][None, :, None].expand(t, ph, pw, -1),
                   ww[wi][None, None, :].expand(t, ph, pw, -1)], dim=-1)
    return a.reshape(t * ph * pw, -1)


def ref_angles_text(tabs, positions):
    fr, hh, ww = tabs
    n = len(positions)
    return torch.cat([fr[positions], hh[:1].expand(n, -1), ww[:1].expand(n, -1)], dim=-1)


def ref_rotate(x, ang):  # official apply_rotary_emb: pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)
    x = x.reshape(*x.shape[:-1], -1, 2)
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)  # angles as the official fp32 tables give them
    return torch.stack([x[..., 0] * c - x[..., 1] * s, x[..., 1] * c + x[..., 0] * s], dim=-1).flatten(-2)


def ref_rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def ref_visual_tokens(sd, lab, levels):
    """``lab`` ``[C, t, h, w]`` -> ``[t·h·w, D]``: the channel-major one-hot times ``word_embed`` (facts §1.4)."""
    c = lab.shape[0]
    one_hot = F.one_hot(lab.permute(1, 2, 3, 0).reshape(-1, c), levels).reshape(-1, c * levels)
    one_hot = one_hot.to(sd["word_embed.weight"].dtype)
    return one_hot @ sd["word_embed.weight"].t() + sd["word_embed.bias"]


def ref_pt_token(sd, kp):
    """The pt token ``[1, D]``: raw pt -> [cos, sin] over 128 frequencies (max period 1e4) -> MLP with SiLU."""
    freq = torch.exp(-math.log(10000) * torch.arange(128, dtype=sd["pt_embedder.mlp.0.weight"].dtype) / 128) * kp
    emb = torch.cat([freq.cos(), freq.sin()])[None]
    return F.linear(F.silu(F.linear(emb, sd["pt_embedder.mlp.0.weight"], sd["pt_embedder.mlp.0.bias"])),
                    sd["pt_embedder.mlp.2.weight"], sd["pt_embedder.mlp.2.bias"])


def ref_text_tokens(sd, txt):
    return txt @ sd["text_proj.weight"].t() + sd["text_proj.bias"]


def repeat_kv(x, n_rep):
    """Official ``repeat_kv``: ``[L, H_kv, hd]`` -> ``[L, H_kv · n_rep, hd]``, each k/v head repeated for its
    group of consecutive query heads."""
    length, kv, hd = x.shape
    return x[:, :, None, :].expand(length, kv, n_rep, hd).reshape(length, kv * n_rep, hd)


def ref_blocks(sd, x, ang, allowed, heads):
    """The Qwen3 blocks over one sequence ``x`` ``[L, D]`` with angles ``[L, hd/2]`` and a bool ``[L, L]`` mask;
    the key/value heads are read off ``k_proj``'s shape."""
    blocks = sorted({k.split(".attn")[0] for k in sd if ".attn.q_proj" in k},
                    key=lambda b: tuple(int(p) for p in b.split(".") if p.isdigit()))
    dim = x.shape[1]
    hd = dim // heads
    for b in blocks:
        p = lambda name: sd[f"{b}.{name}"]  # noqa: E731
        kv = p("attn.k_proj.weight").shape[0] // hd
        hn = ref_rms(x, p("input_layernorm.weight"))
        q = ref_rms((hn @ p("attn.q_proj.weight").t()).view(-1, heads, hd), p("attn.q_norm.weight"))
        k = ref_rms((hn @ p("attn.k_proj.weight").t()).view(-1, kv, hd), p("attn.k_norm.weight"))
        v = (hn @ p("attn.v_proj.weight").t()).view(-1, kv, hd)
        q, k = ref_rotate(q, ang[:, None]), ref_rotate(k, ang[:, None])
        k, v = repeat_kv(k, heads // kv), repeat_kv(v, heads // kv)
        scores = torch.einsum("qhc,khc->hqk", q, k) * hd**-0.5
        scores = scores.masked_fill(~allowed[None], float("-inf"))
        attn = torch.nan_to_num(scores.softmax(-1))  # padding rows are all -inf: zero output
        x = x + torch.einsum("hqk,khc->qhc", attn, v).reshape(-1, dim) @ p("attn.o_proj.weight").t()
        hn = ref_rms(x, p("post_attention_layernorm.weight"))
        x = x + (F.silu(hn @ p("mlp.gate_proj.weight").t()) * (hn @ p("mlp.up_proj.weight").t())) @ \
            p("mlp.down_proj.weight").t()
    return x


def ref_head(sd, x, levels):
    logits = ref_rms(x, sd["head.norm.weight"]) @ sd["head.proj.weight"].t() + sd["head.proj.bias"]
    return logits.view(-1, logits.shape[1] // levels, levels)


def reference_forward_old(sd, samples, texts, kps, levels=2, heads=2, pad=5):
    """Old official training-style packed forward: [vis1, pt1, vis2, pt2, ..., text1, text2, ..., pad]; samples
    ``[C, t, h, w]``, texts ``[L_i, text_dim]``, kps ``[S]`` -> visual logits ``[Σ t·h·w, C, levels]``."""
    dim = sd["word_embed.weight"].shape[0]
    tabs = ref_rope_tables(dim // heads)
    xs, angs, seg, vis_slices = [], [], [], []
    pos = 0
    for i, lab in enumerate(samples):
        c, t, h, w = lab.shape
        xs += [ref_visual_tokens(sd, lab, levels), ref_pt_token(sd, kps[i])]
        angs += [ref_angles_visual(tabs, t, h, w), ref_angles_text(tabs, [512])]
        seg += [i] * (t * h * w + 1)
        vis_slices.append(slice(pos, pos + t * h * w))
        pos += t * h * w + 1
    for j, txt in enumerate(texts):
        xs.append(ref_text_tokens(sd, txt))
        angs.append(ref_angles_text(tabs, list(range(len(txt)))))
        seg += [len(samples) + j] * len(txt)
    xs.append(torch.zeros(pad, dim))
    angs.append(torch.zeros(pad, dim // heads // 2))
    seg += [-1] * pad
    x, ang, seg = torch.cat(xs), torch.cat(angs), torch.tensor(seg)
    # segment table: every segment sees itself; visual segment i also sees text segment n + i; padding nothing
    n = len(samples)
    table = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    table[range(2 * n), range(2 * n)] = True
    table[range(n), range(n, 2 * n)] = True
    allowed = (seg[:, None] >= 0) & (seg[None] >= 0)
    allowed &= table[seg.clamp_min(0)][:, seg.clamp_min(0)]
    logits = ref_head(sd, ref_blocks(sd, x, ang, allowed, heads), levels)
    return torch.cat([logits[s] for s in vis_slices])


def reference_forward_fsa(sd, samples, texts, kps, levels=2, heads=2, first_frames=None, generated_t_offset=None):
    """FSA official forward (update §C1-C2, §B10): per sample ``[vis_i | (first frame_i) | text_i | pt_i]``,
    concatenated without padding, ``cu_seqlens`` full attention within each sample.

    samples ``[C, t, h, w]`` (the generated frames), texts ``[L_i, text_dim]``, kps ``[S]``; ``first_frames``
    (None, or per sample None / clean labels ``[C, 1, h, w]``): I2V, the generated frames sit at time rows
    ``600 + 1 …`` (t_offset 1) and the first frame at 600. Returns the generated tokens' logits
    ``[Σ t·h·w, C, levels]``. ``generated_t_offset`` forces the generated frames' t_offset (tests use it to
    show that a wrong offset changes the logits).
    """
    dim = sd["word_embed.weight"].shape[0]
    tabs = ref_rope_tables(dim // heads)
    first_frames = first_frames or [None] * len(samples)
    xs, angs, lengths, vis_slices = [], [], [], []
    pos = 0
    for lab, first, txt, kp in zip(samples, first_frames, texts, kps):
        c, t, h, w = lab.shape
        parts = [ref_visual_tokens(sd, lab, levels)]
        off = (0 if first is None else 1) if generated_t_offset is None else generated_t_offset
        ang = [ref_angles_visual(tabs, t, h, w, t_offset=off)]
        if first is not None:
            parts.append(ref_visual_tokens(sd, first, levels))
            ang.append(ref_angles_visual(tabs, 1, h, w, t_offset=0))
        parts += [ref_text_tokens(sd, txt), ref_pt_token(sd, kp)]
        ang += [ref_angles_text(tabs, list(range(len(txt)))), ref_angles_text(tabs, [512])]
        xs += parts
        angs += ang
        n = sum(len(p) for p in parts)
        vis_slices.append(slice(pos, pos + t * h * w))
        lengths.append(n)
        pos += n
    x, ang = torch.cat(xs), torch.cat(angs)
    cu = torch.tensor([0] + lengths).cumsum(0)
    seg = torch.bucketize(torch.arange(pos), cu[1:], right=True)  # the sample of each position
    allowed = seg[:, None] == seg[None, :]
    logits = ref_head(sd, ref_blocks(sd, x, ang, allowed, heads), levels)
    return torch.cat([logits[s] for s in vis_slices])


def reference_i2v_guided_logits(sd, generated, first, text_cond, text_uncond, pt, cfg, levels=2, heads=2):
    """Official I2V network pass (update §B5, B6, B8, B9, F3): ``generated`` ``[C, pt, h, w]`` (the current map of
    the generated frames), ``first`` ``[C, 1, h, w]`` (the clean first-frame labels), the two captions
    ``[L, text_dim]`` and the pt value -> ``ℓ_u + cfg·(ℓ_c − ℓ_u)`` over the generated tokens ``[pt·h·w, C, levels]``.
    ``tmp_seqlens = [pt·h·w + h·w + L_cond + 1, pt·h·w + h·w + L_uncond + 1]``; cond logits are the first
    ``pt·h·w`` rows of branch 0, uncond the first ``pt·h·w`` rows of branch 1."""
    both = reference_forward_fsa(sd, [generated, generated], [text_cond, text_uncond],
                                 torch.stack([torch.as_tensor(pt), torch.as_tensor(pt)]), levels, heads,
                                 first_frames=[first, first])
    n = generated[0].numel()
    cond, uncond = both[:n], both[n:]
    return uncond + cfg * (cond - uncond)
