"""The text-to-image / text-to-video GRN network (facts §4.1-4.3): Qwen3-style blocks over one sequence that holds
each sample's visual tokens, its pt (keep-probability) token and its caption, with 3-D RoPE.

Contract:
    labels     int64 ``[B, C, T, h, w]`` (or ``[B, C, h, w]`` for images, T = 1); C = M·d bit labels (GRN_bit,
               round-major channel r·d + c) or d index labels (GRN_ind, values < 2^M)
    keep_prob  float ``[B]``, the share of real tokens in the input map (the pt token's value)
    text       float ``[B, L_text, text_dim]`` caption features (umT5), valid up to ``text_lens`` ``[B]``
    logits     float32 ``[B, K, C, T, h, w]`` (or ``[B, K, C, h, w]``), K = 2 (bit) or 2^M (index)

Attention pattern (``attention``): ``text_only`` (the old release, ``GRN_T2I_2B.pth`` / ``GRN_T2V_2B.pth``: text
attends only its own caption, so a caption's keys and values never change and :meth:`T2IVNet.text_cache` holds them
once) or ``fsa`` (the ``…_FSA_…`` releases, official update §C2: every token attends to its whole sample, text
included). The network is the same; only the mask differs (:mod:`grn.models.packing`).

Image-to-video (``i2v_mode``, recorded in the config like ``attention``): ``first_frame`` is the official form
(official update §B): the given first frame's clean labels are extra tokens after the generated frames, at RoPE time
position 600 with the generated frames at 601…, and no logits are read from them (:meth:`T2IVNet.forward` with
``first_frame=``); ``region`` is the project's earlier form, in which the first latent frame is held fixed as known
tokens of the same T-frame map by the sampler's region mechanism (:func:`grn.sampling.text.first_frame_condition`).
The two see the same tokens at the same positions; they differ in the pt value the sampler gives (§B7) and in
where the condition sits. The network is the same; ``i2v_mode`` only tells the sampler which form to use.

The visual input is an embedding lookup: ``embedding_bag`` over a token's C labels sums the columns of
``word_embed`` that the official one-hot map would select (channel-major one-hot channel ``c·K + label``, facts
§1.4), so the maths and the ``word_embed.weight`` shape ``[D, C·K]`` match the official network without a one-hot
tensor. The head runs on visual tokens only (the official one also runs over text and padding). Parameter names
are the official ones except that blocks are numbered flat (``blocks.{i}``) instead of
``block_chunks.{c}.module.{j}``; :mod:`grn.checkpoints.official_t2iv` renames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grn import hbq
from grn.models.layers import RMSNorm, TimestepEmbedder, flash_varlen
from grn.models.packing import ATTENTION_PATTERNS, FSA, I2V_MODES, TEXT_ONLY, Layout, batched_layout
from grn.models.rope3d import pt_position, rope3d_cos_sin, visual_positions
from grn.models.t2iv_attention import T2IV_ATTN_BACKENDS, SelfAttention, VarlenAttention, flex_block_mask

__all__ = ["I2V_MODES", "T2IV_ATTN_BACKENDS", "T2IV_SIZES", "Block", "LabelHead", "MLP", "SelfAttention", "T2IVNet", "T2IVSize",
           "TextCache", "VarlenAttention", "build_t2iv", "flex_block_mask"]


@dataclass(frozen=True)
class T2IVSize:
    depth: int
    hidden_size: int
    num_heads: int
    mlp_hidden: int  # official: round(D · mlp_ratio / 256) · 256 with mlp_ratio 3.55
    block_chunks: int = 1  # the official FSDP wrap unit; only used to name official checkpoint keys
    num_kv_heads: int | None = None  # grouped-query attention: key/value heads (None: one per query head)


T2IV_SIZES: dict[str, T2IVSize] = {
    "tiny": T2IVSize(depth=2, hidden_size=64, num_heads=2, mlp_hidden=128),
    "grn0b": T2IVSize(depth=4, hidden_size=512, num_heads=4, mlp_hidden=1792),  # official debug size, 18.2 M
    "grn2b": T2IVSize(depth=28, hidden_size=2304, num_heads=18, mlp_hidden=8192, block_chunks=7),
    # official update §A1-A3: the registered GRN8b (the second, winning definition), 7,890,859,520 params
    "grn8b": T2IVSize(depth=36, hidden_size=4096, num_heads=32, mlp_hidden=12288, block_chunks=6),
    # the shadowed first definition: 8 key/value heads (k/v_proj [1024, 4096]), FFN 16384, 8,796,829,184 params
    "grn8b_gqa": T2IVSize(depth=36, hidden_size=4096, num_heads=32, mlp_hidden=16384, block_chunks=6,
                          num_kv_heads=8),
}


@dataclass
class TextCache:
    """Each layer's keys and values of a table of captions (text attends only to its own caption, so these never
    depend on the visual tokens and are computed once per caption, not once per refinement step). Valid only under
    the ``text_only`` pattern: under ``fsa`` text attends the visual tokens and changes every step.

    kv: per block ``(k, v)``, each ``[N, kv_heads, L_text, head_dim]`` (normed, rotated); lens: int64 ``[N]``.
    """

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    lens: torch.Tensor

    def select(self, ids: torch.Tensor) -> "TextCache":
        """The rows ``ids`` ``[B]``, trimmed to the longest of them."""
        lens = self.lens[ids]
        width = int(lens.max())
        return TextCache([(k[ids, :, :width], v[ids, :, :width]) for k, v in self.kv], lens)


class MLP(nn.Module):
    """Qwen3 MLP: ``down(silu(gate(x)) · up(x))``, no bias."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm block without adaLN: ``x += attn(norm(x)); x += mlp(norm(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, backend: str = "sdpa",
                 num_kv_heads: int | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.attn = SelfAttention(dim, num_heads, backend, num_kv_heads)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask, extra_kv=None,
                keep_kv: list | None = None) -> torch.Tensor:
        x = x + self.attn(self.input_layernorm(x), cos, sin, mask, extra_kv, keep_kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class LabelHead(nn.Module):
    """RMSNorm -> Linear(D -> C·K), in float32; output index ``c·K + k`` (channel-major)."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.proj = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(self.norm(x.float()), self.proj.weight.float(), self.proj.bias.float())


class T2IVNet(nn.Module):
    """GRN for text-to-image and text-to-video (GRN_bit or GRN_ind).

    Args:
        latent_dim: tokenizer latent channels d (64 for the released models).
        hbq_rounds: HBQ rounds M.
        target: ``"bits"`` (GRN_bit, the released models) or ``"index"`` (GRN_ind, 2^M levels per channel).
        text_dim: caption feature width (4096 for umT5-XXL).
        depth, hidden_size, num_heads, mlp_hidden: network shape; ``block_chunks`` names official keys.
        num_kv_heads: key/value heads (grouped-query attention; None: ``num_heads``).
        attn_backend: ``sdpa`` (a dense boolean mask) or ``flex`` (flex attention with a block mask; GPU). Under
            ``fsa`` on CUDA in bf16/fp16, flash-attn's varlen kernel runs instead where it is installed.
        attention: ``text_only`` (the old releases) or ``fsa`` (full attention within each sample, the
            ``…_FSA_…`` releases); stored in the config, so a saved model reloads with its pattern.
        i2v_mode: how image-to-video is sampled: ``first_frame`` (official update §B: the first frame's clean tokens
            appended at time position 600, the pt value over the generated tokens only; the official models and
            the project configs) or ``region`` (the first latent frame held fixed as known tokens of the map; the
            pt value counts them as real). Stored in the config; project checkpoints saved before the setting
            existed load with ``region``, as they were sampled.
    """

    num_classes = None  # text-conditioned: no class vocabulary (class-to-image networks have an int here)

    def __init__(
        self,
        latent_dim: int,
        hbq_rounds: int,
        target: hbq.Target = "bits",
        text_dim: int = 4096,
        depth: int = 28,
        hidden_size: int = 2304,
        num_heads: int = 18,
        mlp_hidden: int = 8192,
        block_chunks: int = 1,
        attn_backend: str = "sdpa",
        num_kv_heads: int | None = None,
        attention: str = TEXT_ONLY,
        i2v_mode: str = "first_frame",
    ):
        super().__init__()
        if depth % block_chunks:
            raise ValueError(f"depth {depth} is not divisible by block_chunks {block_chunks}")
        for what, value, options in (("attention pattern", attention, ATTENTION_PATTERNS),
                                     ("i2v_mode", i2v_mode, I2V_MODES)):
            if value not in options:
                raise ValueError(f"unknown {what} {value!r}; choose one of {options}")
        self.latent_dim, self.hbq_rounds, self.target, self.text_dim = latent_dim, hbq_rounds, target, text_dim
        self.block_chunks, self.attn_backend, self.attention, self.i2v_mode = (
            block_chunks, attn_backend, attention, i2v_mode)
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.label_channels = hbq.label_channels(latent_dim, hbq_rounds, target)
        self.num_levels = hbq.num_levels(hbq_rounds, target)
        self.head_dim = hidden_size // num_heads
        width = self.label_channels * self.num_levels

        self.word_embed = nn.Linear(width, hidden_size)
        self.pt_embedder = TimestepEmbedder(hidden_size)
        self.text_proj = nn.Linear(text_dim, hidden_size)
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, mlp_hidden, attn_backend, num_kv_heads)
                                    for _ in range(depth))
        self.head = LabelHead(hidden_size, width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: normal(0, 0.02) for every Linear weight, zero biases, unit norms; no zero-init head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    # ---------------------------------------------------------------------------------------------- inputs
    def embed_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Visual tokens ``[N, C]`` int64 -> ``[N, D]`` float32: the official ``word_embed`` over the channel-major
        one-hot, as a sum of the selected weight columns."""
        c, k = self.label_channels, self.num_levels
        offsets = torch.arange(c, device=labels.device) * k
        w, bias = self.word_embed.weight, self.word_embed.bias
        with torch.autocast(device_type=labels.device.type, enabled=False):  # fp32, as the official embedding
            return F.embedding_bag(labels + offsets, w.float().t(), mode="sum") + bias.float()

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """Caption features ``[Nt, text_dim]`` -> ``[Nt, D]`` float32 (linear, no norm, as the official)."""
        with torch.autocast(device_type=text.device.type, enabled=False):
            return F.linear(text.float(), self.text_proj.weight.float(), self.text_proj.bias.float())

    def embed_keep_prob(self, keep_prob: torch.Tensor) -> torch.Tensor:
        """pt tokens: keep-probabilities ``[S]`` in [0, 1] -> ``[S, D]`` float32 (raw value, sin-cos, MLP)."""
        with torch.autocast(device_type=keep_prob.device.type, enabled=False):
            return self.pt_embedder(keep_prob.float()).float()

    # ---------------------------------------------------------------------------------------------- forward
    def _as_video(self, labels: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """``[B, C, h, w]`` (image) or ``[B, C, T, h, w]`` -> ``([B, C, T, h, w], was_image)``, checked."""
        image = labels.dim() == 4
        video = labels.unsqueeze(2) if image else labels
        if video.dim() != 5 or video.shape[1] != self.label_channels:
            raise ValueError(f"labels must be [B, {self.label_channels}, (T,) h, w], got {list(labels.shape)}")
        return video, image

    def _to_maps(self, logits: torch.Tensor, shape: torch.Size, image: bool) -> torch.Tensor:
        """Per-token logits ``[B·T·h·w, C·K]`` (or ``[…, C, K]``) -> ``[B, K, C, (T,) h, w]``."""
        b, c, t, h, w = shape
        out = logits.reshape(b, t, h, w, c, self.num_levels).permute(0, 5, 4, 1, 2, 3)
        return out.squeeze(3) if image else out

    @property
    def caption_kv_static(self) -> bool:
        """Whether a caption's keys and values are the same at every refinement step (``text_only``), so that
        :meth:`text_cache` / :meth:`forward_cached` are valid. Under ``fsa`` text attends the visual tokens."""
        return self.attention == TEXT_ONLY

    def attention_mask(self, layout: Layout):
        """The mask the blocks take for ``layout``: dense bool (sdpa), a BlockMask (flex), a
        :class:`VarlenAttention` (``fsa`` on CUDA with flash-attn), or None (``fsa`` with one unpadded sample per
        row: full attention, SDPA's fused kernels run)."""
        if self.attention == FSA:
            sid = layout.sample_id
            if sid.numel() and bool(((sid == sid[:, :1]) & (sid >= 0)).all()):
                return None
            if sid.is_cuda and flash_varlen() is not None and self.attn_backend == "sdpa":
                return VarlenAttention(layout)
        if self.attn_backend == "flex":
            return flex_block_mask(layout, self.attention)
        return layout.attention_mask(self.attention)

    def forward_layout(
        self,
        layout: Layout,
        visual_labels: torch.Tensor,
        keep_prob: torch.Tensor,
        text: torch.Tensor,
        mask=None,
        first_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The network over any layout (packed or batched).

        Args:
            layout: token placement (see :mod:`grn.models.packing`), on the input device.
            visual_labels: int64 ``[Nv, C]``, the labels of every visual token in ``layout.visual_index`` order.
            keep_prob: float ``[S]``, each sample's pt value.
            text: float ``[Nt, text_dim]``, the caption tokens in ``layout.text_index`` order.
            mask: a precomputed :meth:`attention_mask` (reuse it across refinement steps), or None.
            first_labels: int64 ``[Nf, C]``, the clean labels of the I2V first-frame tokens in
                ``layout.first_index`` order (needed when the layout has any).
        Returns:
            logits float32 ``[Nv, C, K]`` for the visual tokens (first-frame tokens get none).
        """
        bsz, length = layout.shape
        if visual_labels.shape != (layout.visual_index.numel(), self.label_channels):
            raise ValueError(f"visual_labels must be [{layout.visual_index.numel()}, {self.label_channels}], "
                             f"got {list(visual_labels.shape)}")
        if text.shape != (layout.text_index.numel(), self.text_dim):
            raise ValueError(f"text must be [{layout.text_index.numel()}, {self.text_dim}], got {list(text.shape)}")
        n_first = layout.first_index.numel()
        if n_first and (first_labels is None or first_labels.shape != (n_first, self.label_channels)):
            got = None if first_labels is None else list(first_labels.shape)
            raise ValueError(f"the layout has {n_first} first-frame tokens: first_labels must be "
                             f"[{n_first}, {self.label_channels}], got {got}")
        dim = self.word_embed.out_features
        x = torch.zeros(bsz * length, dim, device=visual_labels.device)
        x = x.index_copy(0, layout.visual_index, self.embed_labels(visual_labels))
        if n_first:  # clean labels through the same one-hot and word_embed (§B4)
            x = x.index_copy(0, layout.first_index, self.embed_labels(first_labels))
        x = x.index_copy(0, layout.pt_index, self.embed_keep_prob(keep_prob))
        x = x.index_copy(0, layout.text_index, self.embed_text(text))
        x = x.view(bsz, length, dim).to(self.word_embed.weight.dtype)
        cos, sin = rope3d_cos_sin(layout.positions, self.head_dim)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        mask = self.attention_mask(layout) if mask is None else mask
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        vis = x.reshape(bsz * length, dim).index_select(0, layout.visual_index)
        return self.head(vis).view(-1, self.label_channels, self.num_levels)

    def _check_caption_cache(self) -> None:
        if not self.caption_kv_static:
            raise ValueError(f"attention={self.attention!r}: text attends the visual tokens, so captions' keys and "
                             "values change every step and cannot be cached; call forward instead")

    @torch.no_grad()
    def text_cache(self, text: torch.Tensor, text_lens: torch.Tensor) -> TextCache:
        """Run captions ``[N, L_text, text_dim]`` (valid up to ``text_lens`` ``[N]``) alone through the blocks and
        keep every layer's keys and values (see :class:`TextCache`). ``text_only`` networks only."""
        self._check_caption_cache()
        n, width = text.shape[:2]
        lens = text_lens.to(device=text.device, dtype=torch.long)
        valid = torch.arange(width, device=text.device)[None] < lens[:, None]  # [N, L]
        x = self.embed_text(text.reshape(n * width, -1)).view(n, width, -1).to(self.word_embed.weight.dtype)
        pos = torch.zeros(n, width, 3, device=text.device)
        pos[..., 0] = torch.arange(width, dtype=torch.float32, device=text.device)
        cos, sin = rope3d_cos_sin(pos, self.head_dim)
        eye = torch.eye(width, dtype=torch.bool, device=text.device)
        mask = (valid[:, None, :] | (~valid[:, :, None] & eye)).unsqueeze(1)  # padding queries: only themselves
        kv: list = []
        for block in self.blocks:
            x = block(x, cos.unsqueeze(1), sin.unsqueeze(1), mask, keep_kv=kv)
        return TextCache(kv, lens)

    def forward_cached(
        self,
        labels: torch.Tensor,
        keep_prob: torch.Tensor,
        cache: TextCache,
        h_div_w_template: float | None = None,
        first_frame: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` with the captions' keys and values from :meth:`text_cache` (rows already selected,
        one per sample): only the visual, first-frame and pt tokens are computed. Same logits as :meth:`forward`
        (``text_only`` networks only)."""
        self._check_caption_cache()
        video, image = self._as_video(labels)
        b, c, t, h, w = video.shape
        n_vis = t * h * w
        parts = [self.embed_labels(video.permute(0, 2, 3, 4, 1).reshape(-1, c)).view(b, n_vis, -1)]
        if first_frame is None:
            pos = [visual_positions(t, h, w, h_div_w_template)]
        else:
            first = self._first_frame_labels(first_frame, labels.shape)
            parts.append(self.embed_labels(first).view(b, h * w, -1))
            pos = [visual_positions(t, h, w, h_div_w_template, frame_offset=1),
                   visual_positions(1, h, w, h_div_w_template)]
        x = torch.cat([*parts, self.embed_keep_prob(keep_prob)[:, None]], dim=1).to(self.word_embed.weight.dtype)
        pos = torch.cat([*pos, pt_position()]).to(labels.device)
        cos, sin = rope3d_cos_sin(pos, self.head_dim)
        lens = cache.lens.to(labels.device)
        width = cache.kv[0][0].shape[2]
        mask = None  # every caption as long as the widest: no mask at all (flash kernels can run)
        if bool((lens < width).any()):
            text_ok = torch.arange(width, device=labels.device)[None] < lens[:, None]
            mask = torch.cat([torch.ones(b, x.shape[1], dtype=torch.bool, device=labels.device), text_ok], 1)
            mask = mask[:, None, None, :]
        for block, kv in zip(self.blocks, cache.kv):
            x = block(x, cos, sin, mask, extra_kv=kv)
        return self._to_maps(self.head(x[:, :n_vis].reshape(b * n_vis, -1)), video.shape, image)

    def forward(
        self,
        labels: torch.Tensor,
        keep_prob: torch.Tensor,
        text: torch.Tensor,
        text_lens: torch.Tensor,
        h_div_w_template: float | None = None,
        first_frame: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same-shape samples, one per row: ``labels [B, C, (T,) h, w]`` -> ``logits [B, K, C, (T,) h, w]``.

        ``text`` ``[B, L_text, text_dim]`` is read up to ``text_lens[b]`` per sample; the rest is padding that
        no token attends to.

        ``first_frame``: official image-to-video (update §B5-B6): the clean labels ``[B, C, (1,) h, w]`` of latent
        frame 0. ``labels`` are then the generated frames 1…T-1 (time positions 601…), the first frame's tokens
        follow them at time position 600, and the logits are the generated frames' only.
        """
        video, image = self._as_video(labels)
        b, c, t, h, w = video.shape
        text_lens = text_lens.to(device=labels.device, dtype=torch.long)
        if text.shape[0] != b or text_lens.shape != (b,) or int(text_lens.max()) > text.shape[1]:
            raise ValueError(f"text must be [{b}, >= max(text_lens), {self.text_dim}] with text_lens [{b}], got "
                             f"{list(text.shape)} and {list(text_lens.shape)}")
        first = None if first_frame is None else self._first_frame_labels(first_frame, labels.shape)
        layout = batched_layout(t, h, w, text_lens, h_div_w_template, first_frame=first is not None)
        valid = torch.arange(text.shape[1], device=text.device)[None] < text_lens[:, None]
        logits = self.forward_layout(layout, video.permute(0, 2, 3, 4, 1).reshape(-1, c), keep_prob, text[valid],
                                     first_labels=first)
        return self._to_maps(logits, video.shape, image)

    def _first_frame_labels(self, first_frame: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """First-frame labels ``[B, C, (1,) h, w]`` of a batch of generated frames ``shape`` -> ``[B·h·w, C]``."""
        if len(shape) != 5:
            raise ValueError("with first_frame, labels are the generated frames [B, C, T, h, w]")
        b, c, _, h, w = shape
        first = first_frame.unsqueeze(2) if first_frame.dim() == 4 else first_frame
        if first.shape != (b, c, 1, h, w):
            raise ValueError(f"first_frame must be [{b}, {c}, (1,) {h}, {w}] (the generated frames' batch, "
                             f"channels and grid), got {list(first_frame.shape)}")
        return first.permute(0, 2, 3, 4, 1).reshape(-1, c)


def build_t2iv(size: str = "tiny", num_classes: None = None, **kwargs) -> T2IVNet:
    """Build a :class:`T2IVNet` from a registered size (``tiny``, ``grn0b``, ``grn2b``, ``grn8b``, ``grn8b_gqa``;
    :data:`T2IV_SIZES`); keyword arguments override
    the size's fields or set the data-dependent ones (latent_dim, hbq_rounds, target, text_dim).

    ``num_classes`` must stay None: the network is text-conditioned. The key exists so that class- and
    text-conditioned generator configs share one schema (code tells them apart by ``net.num_classes is None``).
    """
    if num_classes is not None:
        raise ValueError(f"T2I/T2V networks are text-conditioned: num_classes must be null, got {num_classes}")
    if size not in T2IV_SIZES:
        raise ValueError(f"unknown T2I/T2V size {size!r}; choose one of {sorted(T2IV_SIZES)}")
    shape = dict(T2IV_SIZES[size].__dict__)
    shape.update(kwargs)
    return T2IVNet(**shape)
