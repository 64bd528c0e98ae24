"""Which predictions the next refinement step keeps.

* ``random`` (the paper): every token is kept with the schedule's probability, independently; the kept set is
  re-drawn each step, so earlier decisions can be revised.
* ``confidence`` (the Tab. 10 ablation): the round(t · N) tokens whose sampled value had the highest probability.

With ``revise=False`` (the mask-based baseline of Tab. 7) a kept token is frozen: the kept set only grows, new
tokens are chosen among the not-yet-kept ones, and kept values never change.

All functions work on label maps ``[B, C, h, w]`` with per-sample keep-probabilities ``[B]``; ``selectable``
(bool, broadcastable to the map) restricts the choice to a region.
"""

from __future__ import annotations

import torch

SELECTIONS = ("random", "confidence")


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def top_by_score(score: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """bool mask of the ``count[b]`` highest scores of each sample. ``score`` ``[B, ...]``, ``count`` ``[B]``."""
    flat = score.flatten(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return (ranks < count.view(-1, 1)).view_as(score)


def select_keep(
    selection: str,
    t_next: torch.Tensor,
    t_now: torch.Tensor,
    confidence: torch.Tensor | None,
    kept: torch.Tensor | None,
    selectable: torch.Tensor,
    generator: torch.Generator | None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """The kept set for the next step (bool, the map's shape).

    Args:
        t_next, t_now: keep-probabilities after / before this step, float ``[B]``.
        confidence: probability of each sampled label (``confidence`` selection only).
        kept: the frozen set so far when not revising (None when revising).
        selectable: where tokens may be chosen (bool, map shape).
        uniform: ``random`` only: the draws in [0, 1) (map shape) instead of ``generator``.
    """
    shape = selectable.shape
    if selection == "random":
        u = uniform if uniform is not None else torch.rand(shape, generator=generator, device=selectable.device)
        if kept is None:
            return selectable & (u < _expand(t_next, selectable))
        # grow the frozen set so that its expected share reaches t_next
        p_new = ((t_next - t_now) / (1.0 - t_now).clamp_min(1e-12)).clamp(0.0, 1.0)
        fresh = u < _expand(p_new, selectable)
        return kept | (selectable & ~kept & fresh)
    if selection == "confidence":
        if confidence is None:
            raise ValueError("confidence selection needs the confidence of each prediction")
        n = selectable.flatten(1).sum(1)
        target = torch.round(t_next * n).long()
        score = confidence.float().masked_fill(~selectable, float("-inf"))
        if kept is None:
            return top_by_score(score, target) & selectable
        have = kept.flatten(1).sum(1)
        new = top_by_score(score.masked_fill(kept, float("-inf")), (target - have).clamp_min(0))
        return kept | (new & selectable)
    raise ValueError(f"unknown selection {selection!r}; choose one of {SELECTIONS}")
