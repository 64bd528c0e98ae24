"""Built-in real data that ships inside installed packages, so demos and tests run fully offline.

``load_digits_split`` turns scikit-learn's 1,797 labelled 8×8 handwritten digits into RGB images in [-1, 1]
with a fixed, stratified train/val split; ``DigitsDataModule`` serves them to Lightning as
``{"image", "label"}`` batches. ``builtin_shards`` writes the digits, skimage photo crops and skimage's GIF (as an
mp4) into WebDataset shards in the data cache on first use, for the shard pipeline (``builtin_image_shards``,
``builtin_video_shards``).
"""

from __future__ import annotations

from functools import lru_cache

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from grn.datamodules.skimage_media import COLOUR_PHOTOS, raw_gif, raw_photo

__all__ = [
    "BUILTIN_SHARD_SETS",
    "DIGITS_SPLITS",
    "DigitsDataModule",
    "ImageLabelDataset",
    "builtin_image_shards",
    "builtin_shards",
    "builtin_video_shards",
    "load_digits_split",
]

DIGITS_SPLITS = ("train", "val")
_DIGITS_MAX = 16.0  # load_digits pixel values are integer ink counts in 0..16


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """Raw sklearn digits: images ``float64 [1797, 8, 8]`` in 0..16, labels ``int64 [1797]`` (read once)."""
    from sklearn.datasets import load_digits  # local import: only the built-in data needs sklearn

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    # the cached arrays are shared between calls: nobody may edit them in place
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _split_indices(split: str, val_fraction: float, seed: int) -> np.ndarray:
    """Indices ``int64 [N_split]`` of ``split`` in the raw digits, a pure function of (val_fraction, seed)."""
    from sklearn.model_selection import train_test_split

    _, labels = _raw_digits()
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed, shuffle=True
    )
    # sorted: a split always comes back in dataset order, whatever order sklearn's shuffle left it in
    return np.sort(train_idx if split == "train" else val_idx)


def load_digits_split(
    split: str, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """One split of the scikit-learn digits, ready for the tokenizer / generator.

    Args:
        split: ``"train"`` or ``"val"``: a fixed stratified hold-out (every class in both), the same on
            every call.
        image_size: output side ``S``. The 8×8 digits are upsampled bilinearly (``align_corners=False``),
            which gives smooth white strokes on a black background without bicubic's ringing.
        val_fraction: share of the 1,797 digits held out for ``"val"`` (0.2 → 1,437 train / 360 val).
        seed: ``random_state`` of the split.

    Returns:
        images ``float32 [N, 3, S, S]`` in [-1, 1] (grey replicated to RGB), labels ``int64 [N]`` in 0..9.
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"split must be one of {DIGITS_SPLITS}, got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    raw_images, raw_labels = _raw_digits()
    idx = _split_indices(split, val_fraction, seed)
    x = torch.from_numpy(raw_images[idx] / _DIGITS_MAX).to(torch.float32).unsqueeze(1)  # [N, 1, 8, 8], [0, 1]
    if x.shape[-1] != image_size:
        # bilinear is convex so stays in [0, 1]; the clamp keeps that guarantee if the mode ever changes
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        x = x.clamp_(0.0, 1.0)
    images = (x * 2.0 - 1.0).expand(-1, 3, -1, -1).contiguous()  # [N, 3, S, S] in [-1, 1]
    labels = torch.from_numpy(raw_labels[idx].copy())
    return images, labels


class ImageLabelDataset(Dataset):
    """In-memory dataset over ``images [N, C, H, W]`` and ``labels [N]``; item i is ``{"image", "label"}``.

    The default collate stacks the dicts into ``{"image": [B, C, H, W], "label": int64 [B]}``.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images and labels disagree in length: {images.shape[0]} vs {labels.shape[0]}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn digits as a LightningDataModule (offline, real, labelled: the quickstart's C2I data).

    Batches are ``{"image": float32 [B, 3, S, S] in [-1, 1], "label": int64 [B]}`` with ``S = image_size``.
    The train loader shuffles with its own seeded ``torch.Generator`` (the same order for the same ``seed``,
    whatever the global RNG does); the val loader keeps dataset order and never drops the last batch.
    """

    num_classes = 10

    def __init__(
        self,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.train_set: ImageLabelDataset | None = None
        self.val_set: ImageLabelDataset | None = None
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        # Lightning calls setup once per stage; the data never changes, so build it once
        if self.train_set is not None:
            return
        split_args = (self.image_size, self.val_fraction, self.seed)
        self.train_set = ImageLabelDataset(*load_digits_split("train", *split_args))
        self.val_set = ImageLabelDataset(*load_digits_split("val", *split_args))
        if self.drop_last and self.batch_size > len(self.train_set):
            # otherwise the train loader would silently yield zero batches
            raise ValueError(
                f"batch_size={self.batch_size} exceeds the {len(self.train_set)} training digits with "
                "drop_last=True; lower data.batch_size or set data.drop_last=false"
            )

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool, generator=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        # a fresh generator per loader: a new fit with the same seed replays the same order, while successive
        # epochs of one loader still differ because the generator advances
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(self.train_set, shuffle=True, drop_last=self.drop_last, generator=generator)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, shuffle=False, drop_last=False)


# ------------------------------------------------------------------------------------ built-in sets as shards
# Real sets shipped inside installed packages, written once as WebDataset shards into the data cache, so the
# shard pipeline (and everything downstream: token caches, resume, bad-sample counting) runs fully offline.
BUILTIN_SHARD_SETS = ("digits", "photos", "gif")
_BUILTIN_VERSION = 1  # bump when a generator below changes its output
# the colour photos minus motorcycle_left, which skimage.data does not load by name and these shards never held
# (keeping it out keeps the written shards and their labels as they were)
SKIMAGE_PHOTOS = tuple(name for name in COLOUR_PHOTOS if name != "motorcycle_left")


def _default_cache_dir() -> str:
    import os

    return os.environ.get("GRN_CACHE_DIR", ".cache/grn")


def _png(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _digits_samples(split: str, image_size: int):
    x, y = load_digits_split(split, image_size=image_size)
    pixels = ((x.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    for i in range(len(y)):
        yield {"__key__": f"digits_{split}_{i:06d}", "png": _png(pixels[i]), "cls": int(y[i])}


def _skimage_photos() -> list[tuple[str, np.ndarray]]:
    """The RGB photos of skimage.data that load offline, as uint8 ``[H, W, 3]``."""
    photos = []
    for name in SKIMAGE_PHOTOS:
        try:
            img = raw_photo(name)
        except Exception:  # a photo that needs a download (pooch) in this skimage version: leave it out
            continue
        if img.shape[-1] == 3:
            photos.append((name, np.ascontiguousarray(img)))
    if not photos:
        raise RuntimeError("no skimage.data photo could be loaded offline")
    return photos


def _photo_samples(split: str, crop: int, crops_per_photo: int):
    """Random ``crop²`` crops (fixed seed per split), after halving large photos so crops show whole objects;
    label = photo index."""
    from PIL import Image

    rng = np.random.default_rng(0 if split == "train" else 1)
    for label, (name, img) in enumerate(_skimage_photos()):
        pil = Image.fromarray(img)
        while min(pil.size) >= 4 * crop:
            pil = pil.resize((pil.width // 2, pil.height // 2), Image.BOX)
        arr = np.asarray(pil)
        for k in range(crops_per_photo):
            top = int(rng.integers(0, arr.shape[0] - crop + 1))
            left = int(rng.integers(0, arr.shape[1] - crop + 1))
            yield {"__key__": f"photo_{split}_{name}_{k:04d}", "png": _png(arr[top : top + crop, left : left + crop]),
                   "cls": label}


def _gif_samples(scale: int = 4):
    """skimage's 24-frame ``no_time_for_that_tiny.gif`` as one mp4 sample (upscaled ×``scale``, nearest)."""
    from grn.datamodules.video import encode_mp4

    frames, durations = raw_gif()
    video = frames.repeat(scale, axis=1).repeat(scale, axis=2)  # [T, H, W, 3]
    video = video[:, : video.shape[1] // 2 * 2, : video.shape[2] // 2 * 2]
    fps = 1000.0 / float(np.mean(durations))
    yield {"__key__": "gif_000000", "mp4": encode_mp4(video, fps, gop=4),
           "json": {"fps": fps, "begin_frame_id": 0, "end_frame_id": len(frames), "source": "no_time_for_that_tiny.gif"}}


def builtin_shards(name: str, cache_dir: str | None = None) -> dict[str, str]:
    """Shard patterns ``{"train": ..., "val": ...}`` of a built-in set, generated into
    ``<cache_dir>/shards/<name>-v<version>/`` on first use (atomically: a finished folder or none).

    * ``digits``: the 1,797 sklearn digits, 32×32 RGB PNG, the fixed stratified split of
      :func:`load_digits_split`, labelled 0–9.
    * ``photos``: 64×64 random crops of the skimage photos (48 per photo for train, 8 for val; label = photo).
    * ``gif``: skimage's 24-frame GIF as one mp4 video (train and val are the same clip source).
    """
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from grn.datamodules.writers import write_shards

    if name not in BUILTIN_SHARD_SETS:
        raise ValueError(f"unknown built-in shard set {name!r}; choose one of {BUILTIN_SHARD_SETS}")
    root = Path(cache_dir or _default_cache_dir()) / "shards"
    final = root / f"{name}-v{_BUILTIN_VERSION}"
    splits = ("train", "val")
    if not final.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            for split in splits:
                if name == "digits":
                    samples = _digits_samples(split, 32)
                elif name == "photos":
                    samples = _photo_samples(split, 64, 48 if split == "train" else 8)
                else:
                    samples = _gif_samples()
                write_shards(samples, tmp, prefix=split, max_count=256)
            try:
                os.rename(tmp, final)  # atomic; loses cleanly to a concurrent writer that finished first
            except OSError:
                if not final.is_dir():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    patterns = {}
    for split in splits:
        n = len(sorted(final.glob(f"{split}-*.tar")))
        patterns[split] = str(final / f"{split}-{{000000..{n - 1:06d}}}.tar")
    return patterns


def builtin_image_shards(name: str = "digits", cache_dir: str | None = None, **kwargs):
    """An :class:`~grn.datamodules.images.ImageShardDataModule` over built-in shards (``digits`` / ``photos``),
    generating them on first use. ``image_size`` defaults to the stored size (32 / 64); ``kwargs`` are the
    DataModule's other arguments."""
    from grn.datamodules.images import ImageShardDataModule

    if name not in ("digits", "photos"):
        raise ValueError(f"built-in image shards are 'digits' or 'photos', got {name!r}")
    patterns = builtin_shards(name, cache_dir)
    kwargs.setdefault("image_size", 32 if name == "digits" else 64)
    kwargs.setdefault("num_classes", 10 if name == "digits" else len(_skimage_photos()))
    return ImageShardDataModule(train_shards=patterns["train"], val_shards=patterns["val"], **kwargs)


def builtin_video_shards(cache_dir: str | None = None, **kwargs):
    """A :class:`~grn.datamodules.video.VideoShardDataModule` over the built-in GIF video (24 frames at ~14 fps,
    100×56), generated on first use."""
    from grn.datamodules.video import VideoShardDataModule

    patterns = builtin_shards("gif", cache_dir)
    return VideoShardDataModule(train_shards=patterns["train"], val_shards=patterns["val"], **kwargs)
