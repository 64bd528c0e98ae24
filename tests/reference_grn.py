"""A deliberately straightforward GRN C2I forward pass and sampler, written from the official description
(facts §3.1, §3.5), used only as the parity reference for the fast implementation: one-hot input through the two
1×1 convs, attention with a materialised fp32 softmax, and separate conditional / unconditional passes on
every step. It reads the weights of a :class:`grn.models.generator.GRN` (the official key layout)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rms(x, w, eps=1e-6):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def _rotate(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rot = torch.stack([-x2, x1], dim=-1).reshape(x.shape)
    return x * cos + rot * sin


def reference_logits(net, labels, t, y):
    """``net``'s weights, evaluated the slow way -> logits ``[B, K, C, h, w]``."""
    sd = dict(net.state_dict())
    b, c, h, w = labels.shape
    k = net.num_levels
    one_hot = F.one_hot(labels, k).permute(0, 4, 1, 2, 3).reshape(b, k * c, h, w).float()  # class-major k·C + c
    x = F.conv2d(one_hot, sd["x_embedder.proj1.weight"])
    x = F.conv2d(x, sd["x_embedder.proj2.weight"], sd["x_embedder.proj2.bias"])
    x = x.flatten(2).transpose(1, 2) + sd["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    tf = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1)
    temb = F.linear(F.silu(F.linear(tf, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                    sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    yemb = sd["y_embedder.embedding_table.weight"][y]
    cond = temb + yemb
    heads = net.blocks[0].attn.num_heads
    hd = x.shape[-1] // heads
    cos, sin = net.rope_cos, net.rope_sin
    for i in range(len(net.blocks)):
        p = f"blocks.{i}."
        if i == net.in_context_start:
            x = torch.cat([yemb[:, None] + sd["in_context_posemb"], x], dim=1)
            cos, sin = net.rope_cos_ctx, net.rope_sin_ctx
        mod = F.linear(F.silu(cond), sd[p + "adaLN_modulation.1.weight"], sd[p + "adaLN_modulation.1.bias"])
        sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, dim=-1)
        hx = _rms(x, sd[p + "norm1.weight"]) * (1 + sc1[:, None]) + sh1[:, None]
        qkv = F.linear(hx, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).view(b, -1, 3, heads, hd)
        q, kk, v = qkv.permute(2, 0, 3, 1, 4)
        q = _rotate(_rms(q, sd[p + "attn.q_norm.weight"]), cos, sin)
        kk = _rotate(_rms(kk, sd[p + "attn.k_norm.weight"]), cos, sin)
        attn = torch.softmax((q.float() @ kk.float().transpose(-1, -2)) / math.sqrt(hd), dim=-1)  # materialised
        o = (attn @ v.float()).transpose(1, 2).reshape(b, -1, heads * hd)
        x = x + g1[:, None] * F.linear(o, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        hx = _rms(x, sd[p + "norm2.weight"]) * (1 + sc2[:, None]) + sh2[:, None]
        a, g = F.linear(hx, sd[p + "mlp.w12.weight"], sd[p + "mlp.w12.bias"]).chunk(2, dim=-1)
        x = x + g2[:, None] * F.linear(F.silu(a) * g, sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"])
    x = x[:, net.in_context_len :]
    shift, scale = F.linear(F.silu(cond), sd["final_layer.adaLN_modulation.1.weight"],
                            sd["final_layer.adaLN_modulation.1.bias"]).chunk(2, dim=-1)
    x = _rms(x, sd["final_layer.norm_final.weight"]) * (1 + scale[:, None]) + shift[:, None]
    out = F.linear(x, sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    return out.view(b, h, w, k, c).permute(0, 3, 4, 1, 2)


@torch.no_grad()
def reference_sample(net, y, num_steps, cfg_scale, cfg_interval, temperature, generator, inputs=None):
    """Linear-schedule interval-CFG sampling, conditional and unconditional passes separate on every step; every
    token not kept reverts to the noise drawn once (facts §3.5). ``inputs`` (a list) receives each step's map.

    Draws its random numbers in the same order and shapes as :func:`grn.sampling.refine.refine`, so the same
    seed gives the same labels."""
    b = y.shape[0]
    shape = (b, net.label_channels, net.input_size, net.input_size)
    k = net.num_levels
    noise = torch.randint(0, k, shape, generator=generator, device=y.device)
    z = noise
    lo, hi = cfg_interval
    for i in range(num_steps):
        t_i = i / num_steps
        t = torch.full((b,), t_i, device=y.device)
        if inputs is not None:
            inputs.append(z.clone())
        cond = reference_logits(net, z, t, y)
        uncond = reference_logits(net, z, t, torch.full_like(y, net.num_classes))  # always computed
        scale = cfg_scale if (t_i < hi and (lo == 0 or t_i > lo)) else 1.0
        logits = uncond + scale * (cond - uncond)
        u = torch.rand(logits.shape, generator=generator, device=y.device).clamp(1e-20, 1 - 1e-7)
        pred = (logits / temperature - torch.log(-torch.log(u))).argmax(dim=1)
        if i == num_steps - 1:
            return pred
        keep = torch.rand(shape, generator=generator, device=y.device) < (i + 1) / num_steps
        z = torch.where(keep, pred, noise)
