"""Hierarchical binary quantisation (HBQ), paper Eq. 1-3 / Alg. 1.

A feature F in (-1, 1) is quantised over ``hbq_rounds`` (M) rounds. Round r (1-based) emits the bit
b_r = [F > c_{r-1}] (strict ``>``: a value exactly on a threshold goes to the lower bucket) and moves the
bucket centre c_r = c_{r-1} + (2 b_r - 1) 2^-r, starting from c_0 = 0. The dequantised value is the final
centre, an odd multiple of 2^-M, so |F - F_hat| <= 2^-M on (-1, 1).

Two label layouts, both int64:

* ``target="index"`` (GRN_ind): one label per latent channel, k = sum_r b_r 2^(M-r) (round 1 is the most
  significant bit), k in [0, 2^M). Shape equals the feature shape ``[B, d, (T,) h, w]``.
* ``target="bits"`` (GRN_bit): the M bit maps stacked round-major along the channel axis, channel
  ``r * d + c`` (all d channels of round 1 first). Shape ``[B, M * d, (T,) h, w]``, values in {0, 1}.

Everything here is a pure function over tensors.
"""

from __future__ import annotations

from typing import Literal

import torch

Target = Literal["index", "bits"]
TARGETS = ("index", "bits")


def _check(hbq_rounds: int, target: str) -> None:
    if not isinstance(hbq_rounds, int) or not 1 <= hbq_rounds <= 16:
        raise ValueError(f"hbq_rounds must be an int in [1, 16], got {hbq_rounds!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def num_levels(hbq_rounds: int, target: Target = "index") -> int:
    """Classes per predicted symbol: 2^M for index labels, 2 for bit labels."""
    _check(hbq_rounds, target)
    return 2**hbq_rounds if target == "index" else 2


def label_channels(latent_dim: int, hbq_rounds: int, target: Target = "index") -> int:
    """Channels of the label map: d for index labels, M*d for bit labels."""
    _check(hbq_rounds, target)
    return latent_dim if target == "index" else hbq_rounds * latent_dim


def quantize_bits(features: torch.Tensor, hbq_rounds: int) -> torch.Tensor:
    """Per-round bits of ``features``.

    Args:
        features: float ``[B, d, ...]``, values expected in (-1, 1).
    Returns:
        bool ``[B, M, d, ...]``; ``[:, r]`` is the bit of round r + 1.
    """
    _check(hbq_rounds, "bits")
    # The loop runs over rounds (M <= 16), never over elements. Comparing against the exact dyadic centre
    # keeps the strict-> rule exact; a closed form through (F + 1) * 2^(M-1) loses bits of F near 0.
    centre = torch.zeros_like(features)
    bits = []
    for r in range(1, hbq_rounds + 1):
        b = features > centre
        bits.append(b)
        step = 2.0**-r
        centre = centre + torch.where(b, step, -step)
    return torch.stack(bits, dim=1)


def bits_to_index(bits: torch.Tensor) -> torch.Tensor:
    """bool/int ``[B, M, d, ...]`` round bits -> int64 ``[B, d, ...]`` index (round 1 = MSB)."""
    hbq_rounds = bits.shape[1]
    weights = 2 ** torch.arange(hbq_rounds - 1, -1, -1, device=bits.device, dtype=torch.int64)
    weights = weights.view(1, hbq_rounds, *([1] * (bits.dim() - 2)))
    return (bits.to(torch.int64) * weights).sum(dim=1)


def index_to_bits(index: torch.Tensor, hbq_rounds: int) -> torch.Tensor:
    """int64 ``[B, d, ...]`` index -> bool ``[B, M, d, ...]`` round bits."""
    shifts = torch.arange(hbq_rounds - 1, -1, -1, device=index.device, dtype=torch.int64)
    shifts = shifts.view(1, hbq_rounds, *([1] * (index.dim() - 1)))
    return ((index.unsqueeze(1) >> shifts) & 1).bool()


def stack_rounds(bits: torch.Tensor) -> torch.Tensor:
    """``[B, M, d, ...]`` -> round-major ``[B, M*d, ...]`` (channel r*d + c), int64."""
    return bits.flatten(1, 2).to(torch.int64)


def unstack_rounds(bit_labels: torch.Tensor, hbq_rounds: int) -> torch.Tensor:
    """Round-major ``[B, M*d, ...]`` -> ``[B, M, d, ...]``."""
    if bit_labels.shape[1] % hbq_rounds:
        raise ValueError(
            f"bit labels have {bit_labels.shape[1]} channels, not a multiple of hbq_rounds={hbq_rounds}"
        )
    return bit_labels.unflatten(1, (hbq_rounds, bit_labels.shape[1] // hbq_rounds))


def quantize(features: torch.Tensor, hbq_rounds: int, target: Target = "index") -> torch.Tensor:
    """Features ``[B, d, ...]`` in (-1, 1) -> int64 labels (``[B, d, ...]`` index or ``[B, M*d, ...]`` bits)."""
    _check(hbq_rounds, target)
    bits = quantize_bits(features, hbq_rounds)
    return bits_to_index(bits) if target == "index" else stack_rounds(bits)


def dequantize(
    labels: torch.Tensor, hbq_rounds: int, target: Target = "index", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Labels -> dequantised features F_hat ``[B, d, ...]`` (odd multiples of 2^-M).

    Index: F_hat = (2k + 1 - 2^M) / 2^M. Bits: F_hat = sum_r 2^-(r+1) (2 b_r - 1) (paper Eq. 3). Both are exact
    in float32 for M <= 16.
    """
    _check(hbq_rounds, target)
    if target == "index":
        scale = 2.0**hbq_rounds
        return (2 * labels.to(dtype) + 1 - scale) / scale
    bits = unstack_rounds(labels, hbq_rounds).to(dtype)
    weights = 2.0 ** -torch.arange(1, hbq_rounds + 1, device=labels.device, dtype=dtype)
    weights = weights.view(1, hbq_rounds, *([1] * (bits.dim() - 2)))
    return ((2 * bits - 1) * weights).sum(dim=1)


def index_labels_to_bit_labels(index: torch.Tensor, hbq_rounds: int) -> torch.Tensor:
    """int64 index ``[B, d, ...]`` -> round-major bit labels ``[B, M*d, ...]``."""
    return stack_rounds(index_to_bits(index, hbq_rounds))


def bit_labels_to_index_labels(bit_labels: torch.Tensor, hbq_rounds: int) -> torch.Tensor:
    """Round-major bit labels ``[B, M*d, ...]`` -> int64 index ``[B, d, ...]``."""
    return bits_to_index(unstack_rounds(bit_labels, hbq_rounds))


def quantize_ste(features: torch.Tensor, hbq_rounds: int) -> torch.Tensor:
    """Straight-through HBQ: the forward value is F_hat, the gradient w.r.t. ``features`` is the identity."""
    with torch.no_grad():
        quantized = dequantize(quantize(features, hbq_rounds, "index"), hbq_rounds, "index", features.dtype)
    return features + (quantized - features).detach()
