"""Aspect-ratio buckets of the official T2I/T2V data (facts §4.6) and a batcher that keeps buckets apart.

Each example goes to the template ratio ``h / w`` nearest its own; a template and a size preset ``pn`` give the
token grid ``pw = round(sqrt(s² / r))``, ``ph = round(pw · r)`` (halves up) and pixels ``stride · (ph, pw)``. A batch holds
examples of one bucket only, so every batch has a single shape.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from grn.datamodules.batching import Batcher

__all__ = ["H_DIV_W_TEMPLATES", "PN_SIDE_TOKENS", "BucketBatcher", "PnChoice", "bucket_pixels", "nearest_template",
           "pn_megapixels"]

# the official default h/w templates. The official keys are truncated to 3 decimals (1.777, 0.562, ...); the
# sizes in the official table need the exact ratios behind them (2M at 16:9 is 1088 px high only with 9/16)
H_DIV_W_TEMPLATES = (3.0, 2.5, 2.0, 16 / 9, 1.5, 4 / 3, 1.16, 1.0, 25 / 29, 0.75, 2 / 3, 9 / 16, 0.5, 0.4, 1 / 3)
# pn preset -> side length s in tokens (stride 16)
PN_SIDE_TOKENS = {"0.06M": 16, "0.25M": 32, "0.41M": 40, "0.92M": 60, "1M": 64, "2M": 90}


def nearest_template(h_div_w: float, templates: tuple[float, ...] = H_DIV_W_TEMPLATES) -> float:
    """The template ratio nearest ``h_div_w`` (by absolute difference; the first one on a tie)."""
    if not h_div_w > 0:
        raise ValueError(f"h/w must be positive, got {h_div_w}")
    return min(templates, key=lambda t: abs(t - h_div_w))


def bucket_pixels(h_div_w: float, pn: str | int, stride: int = 16) -> tuple[int, int]:
    """Pixel ``(H, W)`` of a template ratio at preset ``pn`` (a name of :data:`PN_SIDE_TOKENS` or a side ``s``).

    >>> bucket_pixels(9 / 16, "0.41M")
    (480, 848)
    """
    side = PN_SIDE_TOKENS[pn] if isinstance(pn, str) else int(pn)
    # halves round up (0.41M at 0.75: ph = 34.5 -> 35, 560 px, as the official table), not to even
    pw = math.floor(math.sqrt(side * side / h_div_w) + 0.5)
    ph = math.floor(pw * h_div_w + 0.5)
    return stride * ph, stride * pw


def pn_megapixels(pn: str | int, stride: int = 16) -> float:
    """A size preset's pixel count in millions: the number in its name (``"0.41M"`` -> 0.41), or
    ``(side · stride)² / 1e6`` for a side in tokens."""
    if isinstance(pn, str):
        if pn not in PN_SIDE_TOKENS:
            raise ValueError(f"unknown pn {pn!r}; use one of {sorted(PN_SIDE_TOKENS)} or a side in tokens")
        return float(pn[:-1])
    return (int(pn) * stride) ** 2 / 1e6


class PnChoice:
    """Per-example resolution (official ``sample_pn``): a preset drawn from ``pn_list`` with weights ``pn_probs``
    (renormalised), restricted to presets with ``pn < h·w / 1e6 / 0.7`` when the source size is known, so a small
    source is not trained far above its own resolution. Where no preset qualifies, the smallest one is used.

    Args:
        pn_list: presets (names of :data:`PN_SIDE_TOKENS` or sides in tokens).
        pn_probs: one non-negative weight per preset (default: equal).
        stride: pixels per token (for presets given as sides).
    """

    def __init__(self, pn_list: Sequence[str | int], pn_probs: Sequence[float] | None = None, stride: int = 16):
        self.pn_list = [p if isinstance(p, str) else int(p) for p in pn_list]
        if not self.pn_list:
            raise ValueError("pn_list is empty; give at least one size preset")
        probs = [1.0] * len(self.pn_list) if pn_probs is None else [float(x) for x in pn_probs]
        if len(probs) != len(self.pn_list) or any(x < 0 for x in probs) or sum(probs) <= 0:
            raise ValueError(f"pn_probs {list(probs)} must be one non-negative weight per pn_list entry "
                             f"{self.pn_list}, with a positive sum")
        total = sum(probs)
        self.pn_probs = [x / total for x in probs]
        self.megapixels = [pn_megapixels(p, stride) for p in self.pn_list]

    def allowed(self, height: float | None = None, width: float | None = None) -> tuple[list, list[float]]:
        """``(presets, probabilities)`` a source of ``height × width`` pixels can get (all when the size is
        unknown); the probabilities are renormalised over the allowed presets."""
        keep = list(range(len(self.pn_list)))
        if height and width:
            limit = height * width / 1e6 / 0.7
            keep = [i for i in keep if self.megapixels[i] < limit and self.pn_probs[i] > 0]
            if not keep:
                keep = [min(range(len(self.pn_list)), key=lambda i: self.megapixels[i])]
        weights = [self.pn_probs[i] for i in keep]
        total = sum(weights) or 1.0
        return [self.pn_list[i] for i in keep], [w / total for w in weights]

    def draw(self, rng: random.Random, height: float | None = None, width: float | None = None) -> str | int:
        """One preset for a source of ``height × width`` pixels (no draw where only one is allowed)."""
        presets, probs = self.allowed(height, width)
        return presets[0] if len(presets) == 1 else rng.choices(presets, weights=probs)[0]

    def spec(self) -> dict:
        return {"pn_list": list(self.pn_list), "pn_probs": list(self.pn_probs)}


class BucketBatcher(Batcher):
    """Batches of one aspect-ratio bucket each. A sample's bucket is ``sample[key]`` (a hashable, e.g. the
    template ratio); it is removed from the sample. ``pending`` lists samples waiting in any bucket, so an exact
    resume re-fills the buckets (see :mod:`grn.datamodules.wds`)."""

    def __init__(self, batch_size: int, drop_last: bool = True, key: str = "bucket") -> None:
        super().__init__(batch_size, drop_last)
        self.key = key
        self._buckets: dict[object, list[tuple[int, dict]]] = {}

    def add(self, index: int, sample: dict) -> list[list[dict]]:
        bucket = sample.pop(self.key)
        items = self._buckets.setdefault(bucket, [])
        items.append((index, sample))
        if len(items) < self.batch_size:
            return []
        self._buckets[bucket] = []
        return [[s for _, s in items]]

    def flush(self) -> list[list[dict]]:
        out = [[s for _, s in items] for items in self._buckets.values() if items]
        self._buckets = {}
        return [] if self.drop_last else out

    def pending(self) -> list[int]:
        return sorted(i for items in self._buckets.values() for i, _ in items)
