"""FID and Inception Score through upstream torch-fidelity, with statistics that stream and all-reduce.

torch-fidelity builds the feature extractors (``inception-v3-compat``, or our ``grn-digits`` stand-in registered
in :mod:`grn.metrics.digits`) and computes the Fréchet distance (``fid_statistics_to_metric``). What we add is
the bookkeeping that lets every rank extract features for its own share of the samples:

* :class:`FeatureStats` keeps the count, the sum and the sum of outer products of the features in float64;
  ranks sum them with one ``all_reduce`` and ``mu``/``sigma`` follow exactly (``sigma`` as ``np.cov``, N - 1).
* :class:`InceptionScoreStats` keeps, per split, the count, the sum of class probabilities and the sum of
  ``Σ p log p``; the Inception Score of a split is ``exp(E_i[KL(p_i || q)]) = exp(H(q) - E_i[H(p_i)])`` with ``q``
  the split's mean probability, so these sums are sufficient and reduce exactly. A sample's split is its
  *global* index modulo ``splits``, so the score does not depend on how samples were spread over ranks.

Reference statistics are an ``.npz`` with ``mu [D]`` and ``sigma [D, D]`` (the layout of the ADM / JiT
reference batches); its sha256 is recorded next to every FID computed against it.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from grn.io import atomic_write_bytes
from grn.metrics.names import DIGITS_EXTRACTOR_NAME

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "WEIGHTS_CONFIG_KEY",
    "FeatureStats",
    "FidIsAccumulator",
    "InceptionScoreStats",
    "ReferenceStats",
    "build_feature_extractor",
    "file_sha256",
    "frechet_distance",
    "load_reference_stats",
    "save_reference_stats",
    "to_uint8",
]

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_CONFIG_KEY = "eval.fid.feature_extractor_weights_path"
INCEPTION_NAME = "inception-v3-compat"


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def to_uint8(images: Tensor) -> Tensor:
    """``[B, 3, H, W]`` in [-1, 1] → ``uint8 [B, 3, H, W]``, exactly what a PNG writer stores (round to nearest).

    Metrics are computed on these values, so scoring in memory equals writing PNGs and reading them back.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------- statistics
class FeatureStats:
    """Streaming first and second moments of features ``[B, D]`` in float64 (exact under all-reduce)."""

    def __init__(self, dim: int, device: str | torch.device = "cpu"):
        self.dim = int(dim)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, features: Tensor) -> None:
        """Add ``features [B, D]``."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected features [B, {self.dim}], got shape {tuple(features.shape)}")
        f = features.to(device=self.total.device, dtype=torch.float64)
        self.count += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f

    def all_reduce(self) -> "FeatureStats":
        """Sum the moments over all ranks (no-op without an initialised process group of size > 1)."""
        if _dist_on():
            for t in (self.count, self.total, self.outer):
                dist.all_reduce(t)
        return self

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu float64 [D], sigma float64 [D, D])``, ``sigma`` unbiased (N - 1), as ``np.cov``."""
        n = float(self.count)
        if n < 2:
            raise ValueError(f"FID statistics need at least 2 samples, got {int(n)}")
        mu = self.total / n
        sigma = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()


class InceptionScoreStats:
    """Per-split sufficient statistics of the Inception Score from logits ``[B, K]`` (see the module doc)."""

    def __init__(self, num_classes: int, splits: int = 10, device: str | torch.device = "cpu"):
        if splits < 1:
            raise ValueError(f"isc_splits must be >= 1, got {splits}")
        self.splits = int(splits)
        self.count = torch.zeros(splits, dtype=torch.float64, device=device)
        self.prob_sum = torch.zeros(splits, num_classes, dtype=torch.float64, device=device)
        self.plogp_sum = torch.zeros(splits, dtype=torch.float64, device=device)

    def update(self, logits: Tensor, index: Tensor) -> None:
        """Add ``logits [B, K]`` of the samples with global indices ``index int64 [B]``."""
        dev = self.count.device
        logp = torch.log_softmax(logits.to(device=dev, dtype=torch.float64), dim=1)
        p = logp.exp()
        split = index.to(dev).long() % self.splits
        self.count.index_add_(0, split, torch.ones_like(split, dtype=torch.float64))
        self.prob_sum.index_add_(0, split, p)
        self.plogp_sum.index_add_(0, split, (p * logp).sum(1))

    def all_reduce(self) -> "InceptionScoreStats":
        if _dist_on():
            for t in (self.count, self.prob_sum, self.plogp_sum):
                dist.all_reduce(t)
        return self

    def compute(self) -> tuple[float, float]:
        """``(mean, std)`` over splits of ``exp(E[KL(p_i || q)])``, as torch-fidelity's ``isc`` reports them."""
        if bool((self.count == 0).any()):
            raise ValueError(f"Inception Score needs at least {self.splits} samples (one per split)")
        q = self.prob_sum / self.count[:, None]
        q_logq = torch.where(q > 0, q * q.clamp_min(1e-300).log(), torch.zeros_like(q)).sum(1)
        scores = torch.exp(self.plogp_sum / self.count - q_logq)
        return float(scores.mean()), float(scores.std(unbiased=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)``, by torch-fidelity's ``fid_statistics_to_metric`` in float64."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    a = {"mu": np.asarray(mu1, np.float64), "sigma": np.asarray(sigma1, np.float64)}
    b = {"mu": np.asarray(mu2, np.float64), "sigma": np.asarray(sigma2, np.float64)}
    if a["mu"].shape != b["mu"].shape or a["sigma"].shape != b["sigma"].shape:
        raise ValueError(
            f"FID statistics differ in dimension: mu {a['mu'].shape} vs {b['mu'].shape} (were the reference "
            "statistics computed with the same feature extractor?)"
        )
    return float(fid_statistics_to_metric(a, b, verbose=False)[KEY_METRIC_FID])


# ---------------------------------------------------------------------------------------------- reference .npz
@dataclass
class ReferenceStats:
    """Reference statistics: ``mu [D]``, ``sigma [D, D]`` (float64), where they came from and their sha256."""

    mu: np.ndarray
    sigma: np.ndarray
    path: str
    sha256: str


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_reference_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, **meta: Any) -> str:
    """Write ``mu``, ``sigma`` (+ string metadata) atomically to an ``.npz``; returns the file's sha256."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma, **{k: np.asarray(str(v)) for k, v in meta.items()})
    atomic_write_bytes(buf.getvalue(), path)
    return file_sha256(path)


def load_reference_stats(path: str | Path) -> ReferenceStats:
    """Read an ``.npz`` with ``mu`` and ``sigma`` (ADM / JiT layout); one-line errors for a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FID reference statistics not found: {path} (make them with scripts/fid_stats.py, or set "
            "eval.fid.reference_stats)"
        )
    with np.load(path, allow_pickle=False) as data:
        if "mu" not in data or "sigma" not in data:
            raise ValueError(
                f"{path} is not an FID statistics file: it needs arrays 'mu' and 'sigma', has {list(data)}"
            )
        mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    return ReferenceStats(mu=mu, sigma=sigma, path=str(path.resolve()), sha256=file_sha256(path))


# ---------------------------------------------------------------------------------------------- extractors
def build_feature_extractor(
    name: str,
    weights_path: str | Path | None,
    device: str | torch.device = "cpu",
    features: list[str] | None = None,
):
    """A torch-fidelity feature extractor (frozen, eval mode) on ``device``; input ``uint8 [B, 3, H, W]``.

    ``features`` defaults to the extractor's FID layer and IS layer. Nothing is ever downloaded: the Inception
    network needs ``weights_path`` to be the torch-fidelity file :data:`INCEPTION_WEIGHTS_FILE`; the
    ``grn-digits`` stand-in reads (or trains once and caches) the digits classifier at ``weights_path``.
    """
    import torch_fidelity.registry as registry
    from torch_fidelity.utils import create_feature_extractor

    if name == DIGITS_EXTRACTOR_NAME:
        import grn.metrics.digits_extractor  # noqa: F401 - registers it (imported lazily: it pulls in the data code)
    if name not in registry.FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(
            f"unknown feature extractor {name!r}; registered: {sorted(registry.FEATURE_EXTRACTORS_REGISTRY)}"
        )
    cls = registry.FEATURE_EXTRACTORS_REGISTRY[name]
    if weights_path is None or not Path(weights_path).is_file():
        if name == DIGITS_EXTRACTOR_NAME and weights_path is not None:
            from grn.metrics.digits import load_or_train_classifier

            load_or_train_classifier(weights_path)  # the stand-in is trained offline in seconds
        else:
            file = INCEPTION_WEIGHTS_FILE if name == INCEPTION_NAME else "the extractor's weights"
            raise FileNotFoundError(
                f"{name} weights not found at {weights_path}: put {file} there or set {WEIGHTS_CONFIG_KEY}=<path> "
                "(nothing is downloaded)"
            )
    if features is None:
        features = list(dict.fromkeys([cls.get_default_feature_layer_for_metric(m) for m in ("fid", "isc")]))
    extractor = create_feature_extractor(
        name, features, cuda=False, feature_extractor_weights_path=str(weights_path), verbose=False
    )
    return extractor.to(device)


class FidIsAccumulator:
    """Streams images through one feature extractor into FID and IS statistics (one per rank; all-reduced).

    ``update(images_uint8 [B, 3, H, W], index int64 [B])``; ``compute(reference)`` →
    ``{"fid", "inception_score_mean", "inception_score_std", "num_images"}``.
    """

    def __init__(self, extractor, isc_splits: int = 10, batch_size: int = 64):
        self.extractor = extractor
        self.batch_size = batch_size
        self.device = next(extractor.parameters()).device
        names = list(extractor.get_requested_features_list())
        self.fid_layer = extractor.get_default_feature_layer_for_metric("fid")
        self.isc_layer = extractor.get_default_feature_layer_for_metric("isc")
        self._order = names
        self.fid: FeatureStats | None = None
        self.isc: InceptionScoreStats | None = None
        self.isc_splits = isc_splits

    @torch.no_grad()
    def features(self, images: Tensor) -> dict[str, Tensor]:
        """``uint8 [B, 3, H, W]`` → ``{layer: float32 [B, D]}`` (in chunks of ``batch_size``)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"feature extractors take uint8 images (see to_uint8), got {images.dtype}")
        outs = [
            self.extractor(images[i : i + self.batch_size].to(self.device))
            for i in range(0, len(images), self.batch_size)
        ]
        return {name: torch.cat([o[j] for o in outs]).float() for j, name in enumerate(self._order)}

    def update(self, images: Tensor, index: Tensor) -> dict[str, Tensor]:
        feats = self.features(images)
        f, logits = feats[self.fid_layer], feats[self.isc_layer]
        if self.fid is None:
            self.fid = FeatureStats(f.shape[1], self.device)
            self.isc = InceptionScoreStats(logits.shape[1], self.isc_splits, self.device)
        self.fid.update(f)
        self.isc.update(logits, index)
        return feats

    def compute(self, reference: ReferenceStats | None) -> dict[str, Any]:
        """All-reduce (every rank must call this) and score. ``reference=None`` leaves FID out."""
        if self.fid is None:
            raise ValueError("no images were added")
        self.fid.all_reduce()
        self.isc.all_reduce()
        mean, std = self.isc.compute()
        out: dict[str, Any] = {
            "inception_score_mean": mean,
            "inception_score_std": std,
            "num_images": int(self.fid.count),
        }
        if reference is not None:
            mu, sigma = self.fid.mu_sigma()
            out["fid"] = frechet_distance(mu, sigma, reference.mu, reference.sigma)
        return out
