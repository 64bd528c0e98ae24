"""The class-to-image GRN network (JiT-style transformer over HBQ label maps).

Contract:
    labels  int64 ``[B, C, h, w]``, C = d (GRN_ind, values < 2^M) or M·d (GRN_bit, values in {0, 1})
    keep_prob  float ``[B]``, the keep-probability of the input map (1 = all real tokens)
    y       int64 ``[B]``, class ids; ``num_classes`` is the null class used for guidance
    logits  float ``[B, K, C, h, w]``, K = 2^M (ind) or 2 (bit)

The input is an embedding lookup: ``embedding_bag`` over the C labels of a token gathers the same columns of the
first 1×1 projection that the official one-hot map would select (class-major one-hot channel ``k·C + c``), so the
maths and the ``x_embedder.proj1.weight`` shape match the official network without building a ``[B, K·C, h, w]``
one-hot tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grn import hbq
from grn.models.layers import (
    Attention,
    RMSNorm,
    SwiGLU,
    TimestepEmbedder,
    modulate,
    rope_2d_tables,
    sincos_pos_embed_2d,
)


@dataclass(frozen=True)
class GeneratorSize:
    depth: int
    hidden_size: int
    num_heads: int
    bottleneck: int
    in_context_start: int
    in_context_len: int = 32
    mlp_ratio: float = 4.0


# Sizes of the paper (facts §3.2) plus small ones for CPU work.
GENERATOR_SIZES: dict[str, GeneratorSize] = {
    "tiny": GeneratorSize(depth=4, hidden_size=128, num_heads=4, bottleneck=64, in_context_start=1, in_context_len=8),
    "small": GeneratorSize(depth=6, hidden_size=256, num_heads=4, bottleneck=128, in_context_start=2, in_context_len=16),
    "grn_b": GeneratorSize(depth=12, hidden_size=768, num_heads=12, bottleneck=128, in_context_start=4),
    "grn_l": GeneratorSize(depth=24, hidden_size=1024, num_heads=16, bottleneck=128, in_context_start=8),
    "grn_h": GeneratorSize(depth=32, hidden_size=1280, num_heads=16, bottleneck=256, in_context_start=10),
    "grn_g": GeneratorSize(depth=40, hidden_size=1664, num_heads=16, bottleneck=256, in_context_start=10),
}


class LabelEmbedder(nn.Module):
    """Label map ``[B, C, h, w]`` -> tokens ``[B, h*w, D]`` (bottlenecked lookup of the class-major one-hot)."""

    def __init__(self, label_channels: int, num_levels: int, bottleneck: int, hidden_size: int):
        super().__init__()
        self.label_channels = label_channels
        self.num_levels = num_levels
        # Same shapes as the official 1×1 convs so their weights load by name.
        self.proj1 = nn.Conv2d(num_levels * label_channels, bottleneck, 1, bias=False)
        self.proj2 = nn.Conv2d(bottleneck, hidden_size, 1, bias=True)
        self.register_buffer("channel_offsets", torch.arange(label_channels), persistent=False)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        b, c, h, w = labels.shape
        idx = labels.permute(0, 2, 3, 1).reshape(b * h * w, c) * c + self.channel_offsets  # one-hot channel k·C + c
        table = self.proj1.weight.flatten(1).t()  # [K·C, bottleneck]
        x = F.embedding_bag(idx, table, mode="sum")  # [B·h·w, bottleneck]
        x = F.linear(x, self.proj2.weight.flatten(1), self.proj2.bias)
        return x.view(b, h * w, -1)


class ClassEmbedder(nn.Module):
    """Class id -> ``[B, D]``; row ``num_classes`` is the null (unconditional) class."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class GRNBlock(nn.Module):
    """adaLN-Zero transformer block: x += g1·Attn(mod(norm(x))); x += g2·SwiGLU(mod(norm(x)))."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attn_backend: str = "sdpa"):
        super().__init__()
        self.norm1 = RMSNorm(hidden_size)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True, qk_norm=True, backend=attn_backend)
        self.norm2 = RMSNorm(hidden_size)
        self.mlp = SwiGLU(hidden_size, int(hidden_size * mlp_ratio * 2 / 3))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = torch.addcmul(x, g1.unsqueeze(1), self.attn(modulate(self.norm1(x), sh1, sc1), cos, sin))
        return torch.addcmul(x, g2.unsqueeze(1), self.mlp(modulate(self.norm2(x), sh2, sc2)))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.norm_final = RMSNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class GRN(nn.Module):
    """GRN class-to-image network (GRN_ind or GRN_bit).

    Args:
        latent_dim: tokenizer latent channels d.
        hbq_rounds: HBQ rounds M.
        target: ``"index"`` (GRN_ind) or ``"bits"`` (GRN_bit).
        num_classes: number of real classes (the null class is ``num_classes``).
        input_size: side of the square label map (16 for ImageNet 256 with a stride-16 tokenizer).
        depth, hidden_size, num_heads, bottleneck, in_context_start, in_context_len, mlp_ratio: network shape.
        attn_backend: ``sdpa`` (``F.scaled_dot_product_attention``) or ``flash`` (the flash-attn package on GPU).
        bit_target: GRN_bit only — ``"absolute"`` (predict each bit of the real token) or ``"relative"`` (paper
            App. E.3 as implemented here: predict whether each *input* bit must flip, i.e. ``input XOR real``).
            It changes what the logits mean, not the parameters, and is kept with the network so a checkpoint
            is always sampled the way it was trained.
    """

    def __init__(
        self,
        latent_dim: int,
        hbq_rounds: int,
        target: hbq.Target = "index",
        num_classes: int = 1000,
        input_size: int = 16,
        depth: int = 12,
        hidden_size: int = 768,
        num_heads: int = 12,
        bottleneck: int = 128,
        in_context_start: int = 4,
        in_context_len: int = 32,
        mlp_ratio: float = 4.0,
        attn_backend: str = "sdpa",
        bit_target: str = "absolute",
    ):
        super().__init__()
        if bit_target not in ("absolute", "relative"):
            raise ValueError(f"bit_target must be 'absolute' or 'relative', got {bit_target!r}")
        if bit_target == "relative" and target != "bits":
            raise ValueError("bit_target='relative' needs target='bits' (GRN_bit); index labels have no bits to flip")
        if not 0 <= in_context_start < depth:
            raise ValueError(f"in_context_start={in_context_start} must be in [0, depth={depth})")
        self.latent_dim, self.hbq_rounds, self.target, self.bit_target = latent_dim, hbq_rounds, target, bit_target
        self.num_classes, self.input_size = num_classes, input_size
        self.label_channels = hbq.label_channels(latent_dim, hbq_rounds, target)
        self.num_levels = hbq.num_levels(hbq_rounds, target)
        self.in_context_start = in_context_start
        self.in_context_len = in_context_len

        self.x_embedder = LabelEmbedder(self.label_channels, self.num_levels, bottleneck, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = ClassEmbedder(num_classes, hidden_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, input_size, input_size)[None])
        self.in_context_posemb = nn.Parameter(torch.zeros(1, in_context_len, hidden_size))
        self.blocks = nn.ModuleList(GRNBlock(hidden_size, num_heads, mlp_ratio, attn_backend) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, self.num_levels * self.label_channels)

        cos, sin = rope_2d_tables(input_size, input_size, hidden_size // num_heads)
        # In-context class tokens get the identity rotation (cos 1, sin 0), prepended to the image tables.
        ctx_cos = torch.cat([torch.ones(in_context_len, cos.shape[1]), cos])
        ctx_sin = torch.cat([torch.zeros(in_context_len, sin.shape[1]), sin])
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_cos_ctx", ctx_cos, persistent=False)
        self.register_buffer("rope_sin_ctx", ctx_sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        def init_linear(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(init_linear)
        for conv in (self.x_embedder.proj1, self.x_embedder.proj2):
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj2.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.in_context_posemb, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the output as uniform logits (loss = ln K).
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, labels: torch.Tensor, keep_prob: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = labels.shape
        if c != self.label_channels or h != self.input_size or w != self.input_size:
            raise ValueError(
                f"GRN expects labels [B, {self.label_channels}, {self.input_size}, {self.input_size}], "
                f"got {list(labels.shape)}"
            )
        x = self.x_embedder(labels) + self.pos_embed.to(dtype=self.x_embedder.proj2.weight.dtype)
        y_emb = self.y_embedder(y)
        cond = self.t_embedder(keep_prob) + y_emb
        cos, sin = self.rope_cos, self.rope_sin
        for i, block in enumerate(self.blocks):
            if i == self.in_context_start:
                ctx = y_emb.unsqueeze(1) + self.in_context_posemb
                x = torch.cat([ctx.to(x.dtype), x], dim=1)
                cos, sin = self.rope_cos_ctx, self.rope_sin_ctx
            x = block(x, cond, cos, sin)
        x = x[:, self.in_context_len :] if self.in_context_start < len(self.blocks) else x
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = self.final_layer(x.float(), cond.float())  # logits in fp32, as the official head
        # out index = class·C + channel (class-major), as the official layout
        return out.view(b, h, w, self.num_levels, c).permute(0, 3, 4, 1, 2)


def build_generator(size: str = "tiny", **kwargs) -> GRN:
    """Build a :class:`GRN` from a registered size (``tiny``, ``small``, ``grn_b``/``l``/``h``/``g``).

    Keyword arguments override the size's fields or set the data-dependent ones (latent_dim, hbq_rounds, target,
    num_classes, input_size).
    """
    if size not in GENERATOR_SIZES:
        raise ValueError(f"unknown generator size {size!r}; choose one of {sorted(GENERATOR_SIZES)}")
    shape = dict(GENERATOR_SIZES[size].__dict__)
    shape.update(kwargs)
    return GRN(**shape)
