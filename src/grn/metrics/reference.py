"""Reference statistics for FID: from WebDataset shards, an image folder, or a built-in split.

Used by ``scripts/fid_stats.py`` (reference ``.npz`` for any image set) and by ``eval.py`` (the digits reference is
built once from the train split and cached). Images are read as RGB ``uint8``, optionally resized (short side,
bicubic) and centre-cropped to ``image_size`` — the ADM preprocessing without its box-filter halving — and streamed
through the feature extractor in batches; unreadable images are skipped and counted, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from grn.metrics.fid import (
    FidIsAccumulator,
    ReferenceStats,
    file_sha256,
    load_reference_stats,
    save_reference_stats,
    to_uint8,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "ensure_reference_stats",
    "iter_folder_images",
    "iter_shard_images",
    "pil_to_uint8",
    "stats_from_batches",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def pil_to_uint8(img: Image.Image, image_size: int | None = None) -> torch.Tensor:
    """PIL image → ``uint8 [3, S, S]`` (short side resized bicubic to S, then centre crop) or ``[3, H, W]``."""
    img = img.convert("RGB")
    if image_size is not None:
        w, h = img.size
        scale = image_size / min(w, h)
        img = img.resize(
            (max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BICUBIC
        )
        w, h = img.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        img = img.crop((left, top, left + image_size, top + image_size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def iter_folder_images(
    folder: str | Path, image_size: int | None, skipped: list[str]
) -> Iterator[torch.Tensor]:
    """Every image file under ``folder`` (recursive, sorted) as ``uint8 [3, H, W]``; bad files go to ``skipped``."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    for path in files:
        try:
            with Image.open(path) as img:
                yield pil_to_uint8(img, image_size)
        except Exception as err:  # noqa: BLE001 - a corrupt file is skipped and counted, not fatal
            skipped.append(f"{path}: {type(err).__name__}")


def iter_shard_images(
    urls: str | list[str], image_size: int | None, skipped: list[str]
) -> Iterator[torch.Tensor]:
    """Images of WebDataset shards (``<key>.jpg|jpeg|png|webp``, e.g. class-image shards with ``<key>.cls``).

    Read in order, once (no shuffle, no resampling); a sample that fails to decode is skipped and counted.
    """
    import webdataset as wds

    def count(exn: Exception) -> bool:
        skipped.append(f"{type(exn).__name__}: {exn}"[:200])
        return True  # keep going

    dataset = (
        wds.WebDataset(urls, shardshuffle=False, handler=count, empty_check=False)
        .decode("pil", handler=count)
        .to_tuple("jpg;jpeg;png;webp", handler=count)
    )
    for (img,) in dataset:
        try:
            yield pil_to_uint8(img, image_size)
        except Exception as err:  # noqa: BLE001
            skipped.append(f"{type(err).__name__}: {err}"[:200])


def _batched(images: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    batch: list[torch.Tensor] = []
    for img in images:
        batch.append(img)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def stats_from_batches(
    acc: FidIsAccumulator, images: Iterable[torch.Tensor], batch_size: int = 64, max_images: int | None = None
) -> int:
    """Feed ``uint8 [3, H, W]`` images (one size) into ``acc`` in batches; returns how many were used."""
    seen = 0
    for batch in _batched(images, batch_size):
        if max_images is not None:
            batch = batch[: max_images - seen]
        acc.update(batch, torch.arange(seen, seen + len(batch)))
        seen += len(batch)
        if max_images is not None and seen >= max_images:
            break
    return seen


def _weights_digest(weights_path: Any) -> str:
    return file_sha256(weights_path) if weights_path and Path(weights_path).is_file() else "none"


def ensure_reference_stats(fid_cfg: Any, acc: FidIsAccumulator, data_cfg: Any = None) -> ReferenceStats:
    """Load ``fid_cfg.reference_stats``; where it is missing (or was made with other extractor weights) and
    ``fid_cfg.build_reference`` is set, build it from the train split of ``data_cfg`` with ``acc``'s extractor.

    Every rank builds the same statistics in memory; rank 0 writes the file (atomically).
    """
    path = Path(fid_cfg.reference_stats)
    weights = _weights_digest(fid_cfg.get("feature_extractor_weights_path"))
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            made_with = str(data["weights_sha256"]) if "weights_sha256" in data else None
        if made_with in (None, weights) or not fid_cfg.get("build_reference"):
            return load_reference_stats(path)
        log.info("reference statistics %s were made with other extractor weights: rebuilding", path)
    elif not fid_cfg.get("build_reference"):
        return load_reference_stats(path)  # raises the one-line "not found" error
    if data_cfg is None:
        raise ValueError(
            "eval.fid.build_reference needs eval.data (the real images) to build the reference from"
        )
    from hydra.utils import instantiate

    data = data_cfg if hasattr(data_cfg, "setup") else instantiate(data_cfg)  # a datamodule or its config
    data.setup("fit")
    train = data.train_set
    images = (to_uint8(train[i]["image"][None])[0] for i in range(len(train)))
    ref_acc = FidIsAccumulator(acc.extractor, isc_splits=1, batch_size=acc.batch_size)
    n = stats_from_batches(ref_acc, images, batch_size=acc.batch_size)
    mu, sigma = ref_acc.fid.mu_sigma()
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        digest = save_reference_stats(
            path,
            mu,
            sigma,
            extractor=acc.extractor.get_name(),
            weights_sha256=weights,
            num_images=n,
            source="train split",
        )
        log.info("built FID reference statistics from %d train images -> %s", n, path)
    else:
        digest = "written by rank 0"
    return ReferenceStats(mu=mu, sigma=sigma, path=str(path.resolve()), sha256=digest)
