"""Sequence layouts for the T2I/T2V network: which token sits where, its 3-D position, and who may attend to whom.

A layout has B rows of L slots. Each row holds one or more samples; a sample is a contiguous segment
``[visual tokens (T·h·w, (t, h, w) row-major) | pt token | its caption's text tokens]``; unused slots are padding.
An image-to-video sample in the official first-frame form (official update §B5-B6, B10) is
``[generated frames (T·h·w, time positions 601…) | first frame (h·w, clean, time position 600) | pt | text]``: the
first-frame tokens are visual tokens for attention, but no logits are read from them.
Attention, two patterns (the network's ``attention`` setting):

* ``text_only`` (facts §4.3, the old releases): visual and pt tokens attend to every token of their own sample
  (their own visual tokens, pt token and caption); text tokens attend only to their own caption;
* ``fsa`` (official update §C2, the ``…_FSA_…`` releases): every token attends to every token of its own sample,
  text included (full bidirectional attention, block-diagonal over the samples).

In both, nothing attends to another sample or to padding. A padding slot attends only to itself, so no softmax row
is empty (its output is never read). The official FSA sequence orders a sample ``[visual | text | pt]``; ours is
``[visual | pt | text]``: with explicit RoPE positions and a mask that does not depend on order, attention is
permutation-equivariant, so the logits are the same.

* :func:`batched_layout` — one sample per row, all with the same latent shape (inference, and guidance where the
  conditional and unconditional branches are just more rows). Built with tensor ops, no loop over samples.
* :func:`packed_layout` — several samples of any shapes per row (training by token budget; the loop over samples
  runs once per batch, in the data pipeline, not per layer).
* :func:`pack_by_budget` — greedy assignment of samples to rows so that no row exceeds a token budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from grn.models.rope3d import pt_position, text_positions, visual_positions

VISUAL, PT, TEXT, PAD, FIRST = 0, 1, 2, 3, 4  # FIRST: the clean first frame of an I2V sample
TEXT_ONLY, FSA = "text_only", "fsa"
ATTENTION_PATTERNS = (TEXT_ONLY, FSA)
# how image-to-video is sampled (the network's ``i2v_mode``): the official first-frame tokens (this module's FIRST
# slots) | the first latent frame held as known tokens of the map (region re-generation)
I2V_MODES = ("first_frame", "region")


@dataclass(frozen=True)
class SampleSpec:
    """One sample of a layout: a ``frames × height × width`` latent and a caption of ``text_len`` tokens."""

    frames: int
    height: int
    width: int
    text_len: int
    h_div_w_template: float | None = None  # None: the template nearest to height / width
    first_frame: bool = False  # I2V: ``frames`` generated frames (positions 601…) plus a clean first frame (600)

    @property
    def num_visual(self) -> int:
        """The tokens the network predicts (the generated frames)."""
        return self.frames * self.height * self.width

    @property
    def num_first(self) -> int:
        """The first frame's tokens (0 without one)."""
        return self.height * self.width if self.first_frame else 0

    @property
    def num_tokens(self) -> int:
        return self.num_visual + self.num_first + 1 + self.text_len


@dataclass
class Layout:
    """Where each token of a ``[B, L]`` sequence comes from.

    sample_id: int64 ``[B, L]``, the sample each slot belongs to (-1: padding).
    kind: int64 ``[B, L]``, VISUAL / PT / TEXT / PAD / FIRST.
    positions: float32 ``[B, L, 3]``, 3-D RoPE positions (0 for padding).
    visual_index: int64 ``[Nv]``, flat slots (``b·L + l``) of the visual tokens, samples in order, each (t, h, w)
        row-major — the order of the ``visual_labels`` rows the network takes.
    pt_index: int64 ``[S]``, the flat slot of each sample's pt token.
    text_index: int64 ``[Nt]``, flat slots of the text tokens, samples in order.
    first_index: int64 ``[Nf]``, flat slots of the I2V first-frame tokens, samples in order, each (h, w)
        row-major (empty without I2V samples) — the order of the ``first_labels`` rows the network takes.
    """

    sample_id: torch.Tensor
    kind: torch.Tensor
    positions: torch.Tensor
    visual_index: torch.Tensor
    pt_index: torch.Tensor
    text_index: torch.Tensor
    first_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.sample_id.shape)

    @property
    def visual_sample_id(self) -> torch.Tensor:
        """int64 ``[Nv]``: the sample of each visual token (for per-sample loss means, facts §4.4)."""
        return self.sample_id.reshape(-1).index_select(0, self.visual_index)

    def to(self, device: torch.device | str) -> "Layout":
        return Layout(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def attention_mask(self, pattern: str = TEXT_ONLY) -> torch.Tensor:
        """bool ``[B, 1, L, L]``, True where query slot q may attend to key slot k (for SDPA), under ``pattern``
        (``text_only`` | ``fsa``, see the module docstring)."""
        if pattern not in ATTENTION_PATTERNS:
            raise ValueError(f"unknown attention pattern {pattern!r}; choose one of {ATTENTION_PATTERNS}")
        sid, kind = self.sample_id, self.kind
        allowed = (sid[:, :, None] == sid[:, None, :]) & (sid >= 0)[:, None, :]
        if pattern == TEXT_ONLY:
            allowed &= ~(kind == TEXT)[:, :, None] | (kind == TEXT)[:, None, :]
        pad_q = (sid < 0)[:, :, None]
        eye = torch.eye(sid.shape[1], dtype=torch.bool, device=sid.device)[None]
        return (allowed | (pad_q & eye)).unsqueeze(1)

    def varlen_segments(self) -> tuple[torch.Tensor, int, torch.Tensor]:
        """The ``fsa`` pattern as varlen segments (flash-attn): ``(cu_seqlens int32 [S + 1], max_seqlen,
        token_index int64 [N_real])``; ``token_index`` lists the flat slots of the real tokens row by row, so each
        sample's tokens are consecutive (a sample is one contiguous segment of a row) and segment s is
        ``token_index[cu_seqlens[s] : cu_seqlens[s + 1]]``."""
        flat = self.sample_id.reshape(-1)
        token_index = (flat >= 0).nonzero().squeeze(1)
        _, counts = torch.unique_consecutive(flat.index_select(0, token_index), return_counts=True)
        cu = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=flat.device)
        cu[1:] = counts.cumsum(0)
        return cu, int(counts.max()) if counts.numel() else 0, token_index


def batched_layout(
    frames: int, height: int, width: int, text_lens: torch.Tensor, h_div_w_template: float | None = None,
    first_frame: bool = False,
) -> Layout:
    """One sample per row, each ``[visual (T·h·w) | pt | text (text_lens[b]) | padding to max(text_lens)]``.

    ``text_lens``: int64 ``[B]``. ``first_frame``: every row is I2V in the official form, ``[generated (T·h·w, time
    positions 601 … 600 + T) | first frame (h·w, time position 600) | pt | text | padding]``.
    """
    text_lens = text_lens.long()
    device = text_lens.device
    bsz = text_lens.shape[0]
    n_vis = frames * height * width
    n_first = height * width if first_frame else 0
    n_img = n_vis + n_first  # visual-like slots before the pt token
    max_text = int(text_lens.max()) if bsz else 0
    length = n_img + 1 + max_text
    slot = torch.arange(length, device=device)
    text_slot = slot[None, :] - (n_img + 1)  # [1, L], text token number of each slot
    kind = torch.full((bsz, length), PAD, dtype=torch.long, device=device)
    kind[:, :n_vis] = VISUAL
    kind[:, n_vis:n_img] = FIRST
    kind[:, n_img] = PT
    is_text = (text_slot >= 0) & (text_slot < text_lens[:, None])
    kind[is_text] = TEXT
    rows = torch.arange(bsz, device=device)
    sample_id = torch.where(kind == PAD, -1, rows[:, None].expand(bsz, length))

    positions = torch.zeros(bsz, length, 3, device=device)
    positions[:, :n_img] = _image_positions(frames, height, width, h_div_w_template, first_frame).to(device)
    positions[:, n_img] = pt_position().to(device)
    positions[:, n_img + 1 :, 0] = torch.arange(max_text, dtype=torch.float32, device=device)
    positions = positions * (kind != PAD)[..., None]

    flat = rows[:, None] * length
    return Layout(
        sample_id=sample_id,
        kind=kind,
        positions=positions,
        visual_index=(flat + slot[None, :n_vis]).reshape(-1),
        pt_index=rows * length + n_img,
        text_index=(flat + slot[None, :]).masked_select(is_text),
        first_index=(flat + slot[None, n_vis:n_img]).reshape(-1),
    )


def _image_positions(frames: int, height: int, width: int, h_div_w_template: float | None,
                     first_frame: bool) -> torch.Tensor:
    """Positions of a sample's visual-like tokens: its ``frames`` frames from time 600, or, with ``first_frame``,
    the generated frames from 601 (official ``t_offset=1``) followed by the first frame at 600 (``t_offset=0``)."""
    if not first_frame:
        return visual_positions(frames, height, width, h_div_w_template)
    return torch.cat([visual_positions(frames, height, width, h_div_w_template, frame_offset=1),
                      visual_positions(1, height, width, h_div_w_template, frame_offset=0)])


def packed_layout(
    specs: Sequence[SampleSpec], rows: Sequence[Sequence[int]] | None = None, row_length: int | None = None
) -> Layout:
    """Several samples per row: ``rows[r]`` lists the sample numbers (indices into ``specs``) packed in row r, in
    order. Default: one sample per row. ``row_length``: pad every row to this many slots (a fixed token budget
    gives static shapes); default the longest row.

    The sample numbers become the layout's ``sample_id``; visual / pt / text indices follow the sample numbers,
    so the network's ``visual_labels``, ``keep_prob`` and ``text`` inputs are in the order of ``specs``.
    """
    rows = [[i] for i in range(len(specs))] if rows is None else [list(r) for r in rows]
    used = sorted(i for r in rows for i in r)
    if used != list(range(len(specs))):
        raise ValueError(f"rows must use every sample exactly once; got {rows} for {len(specs)} samples")
    lengths = [sum(specs[i].num_tokens for i in r) for r in rows]
    length = max(lengths, default=0) if row_length is None else row_length
    if lengths and max(lengths) > length:
        raise ValueError(f"a row needs {max(lengths)} slots but row_length is {length}")
    bsz = len(rows)
    sample_id = torch.full((bsz, length), -1, dtype=torch.long)
    kind = torch.full((bsz, length), PAD, dtype=torch.long)
    positions = torch.zeros(bsz, length, 3)
    vis_at, pt_at, text_at = [None] * len(specs), [0] * len(specs), [None] * len(specs)
    first_at = [torch.zeros(0, dtype=torch.long)] * len(specs)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            s = specs[i]
            seg = slice(start, start + s.num_tokens)
            sample_id[r, seg] = i
            n_img = s.num_visual + s.num_first
            kind[r, seg] = torch.cat([
                torch.full((s.num_visual,), VISUAL), torch.full((s.num_first,), FIRST), torch.tensor([PT]),
                torch.full((s.text_len,), TEXT)
            ])
            positions[r, seg] = torch.cat([
                _image_positions(s.frames, s.height, s.width, s.h_div_w_template, s.first_frame), pt_position(),
                text_positions(s.text_len),
            ])
            base = r * length + start
            vis_at[i] = torch.arange(base, base + s.num_visual)
            first_at[i] = torch.arange(base + s.num_visual, base + n_img)
            pt_at[i] = base + n_img
            text_at[i] = torch.arange(base + n_img + 1, base + s.num_tokens)
            start += s.num_tokens
    empty = torch.zeros(0, dtype=torch.long)
    return Layout(
        sample_id=sample_id,
        kind=kind,
        positions=positions,
        visual_index=torch.cat(vis_at) if specs else empty,
        pt_index=torch.tensor(pt_at, dtype=torch.long),
        text_index=torch.cat(text_at) if specs else empty,
        first_index=torch.cat(first_at) if specs else empty,
    )


def pack_by_budget(token_counts: Sequence[int], budget: int) -> tuple[list[list[int]], list[int]]:
    """Greedy packing in order: a sample joins the current row if the row stays within ``budget`` tokens, else it
    opens a new row. Returns ``(rows, skipped)``; a sample longer than the budget on its own is skipped (listed in
    ``skipped`` so the caller can count it) instead of overflowing — the official packer lets the last sample
    overflow the budget and then drops it after encoding it (facts §5.2)."""
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}")
    rows: list[list[int]] = []
    skipped: list[int] = []
    fill = budget  # forces a new row for the first sample
    for i, n in enumerate(token_counts):
        if n > budget:
            skipped.append(i)
            continue
        if fill + n > budget:
            rows.append([])
            fill = 0
        rows[-1].append(i)
        fill += n
    return rows, skipped
