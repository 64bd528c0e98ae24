"""Real offline pixels for the tokenizer: scikit-image's photos as random crops, its tiny GIF as short clips.

Everything here ships inside the installed ``scikit-image`` package (read by
:mod:`grn.datamodules.skimage_media`), so tokenizer training and its evidence run without any download.

* Photos (:func:`load_photos`): colour photographs (astronaut, rocket, hubble_deep_field, …), resized so the
  shorter side is ``short_side``; training draws random ``crop_size²`` crops with horizontal flips, validation
  uses a fixed grid of crops from *other* photos (the split is by photo, so no pixel of a val photo is ever
  trained on).
* GIF (:func:`load_gif_frames`): ``skimage/data/no_time_for_that_tiny.gif``, 24 real frames of only 25×14
  pixels, up-sampled so the shorter side is ``short_side``. Training draws clips of ``clip_frames`` (= 1 + 4k
  for the official temporal stride 4) from the first ``24 - val_frames`` frames with random crops, time offsets
  and flips; validation uses fixed clips from the last ``val_frames`` frames (a held-out time range).
* Joint (:class:`PhotosGifDataModule`): every training batch carries both an image batch and a clip batch.

Batch contract (all float32 in [-1, 1]): ``{"image": [B, 3, H, W]}`` (photos), ``{"video": [B, 3, T, H, W]}``
(GIF), ``{"image": [B_i, 3, H, W], "video": [B_v, 3, T, H', W']}`` (joint). Random crops are a pure function of
``(seed, index)``, so the same seed gives the same crops with any number of loader workers.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from grn.datamodules.skimage_media import (
    COLOUR_PHOTOS,
    DEFAULT_VAL_PHOTOS,
    GIF_PATH,
    load_gif_frames,
    load_photos,
)

__all__ = [
    "COLOUR_PHOTOS",
    "GIF_PATH",
    "GifClipsDataModule",
    "PhotosDataModule",
    "PhotosGifDataModule",
    "RandomClips",
    "RandomCrops",
    "fixed_clips",
    "fixed_crops",
    "load_gif_frames",
    "load_photos",
]


def _check_crop(crop_size: int, tensors, what: str) -> None:
    for x in tensors:
        if x.shape[-2] < crop_size or x.shape[-1] < crop_size:
            raise ValueError(
                f"{what} of size {tuple(x.shape[-2:])} is smaller than crop_size={crop_size}: "
                "raise short_side or lower crop_size"
            )


def _grid_starts(length: int, crop: int, n: int) -> list[int]:
    """``n`` evenly spaced crop starts covering ``[0, length - crop]``."""
    if n == 1:
        return [(length - crop) // 2]
    return [round(i * (length - crop) / (n - 1)) for i in range(n)]


def fixed_crops(photos: list[Tensor], crop_size: int, grid: int) -> Tensor:
    """A deterministic ``grid × grid`` lattice of crops per photo: ``[len(photos)·grid², 3, S, S]``."""
    _check_crop(crop_size, photos, "photo")
    crops = []
    for x in photos:
        for top in _grid_starts(x.shape[-2], crop_size, grid):
            for left in _grid_starts(x.shape[-1], crop_size, grid):
                crops.append(x[:, top : top + crop_size, left : left + crop_size])
    return torch.stack(crops)


def fixed_clips(frames: Tensor, clip_frames: int, crop_size: int) -> Tensor:
    """Non-overlapping centre-cropped clips of ``frames [3, T, H, W]``: ``[T // clip_frames, 3, clip, S, S]``."""
    _check_crop(crop_size, [frames], "GIF frame")
    n = frames.shape[1] // clip_frames
    if n < 1:
        raise ValueError(f"{frames.shape[1]} frames cannot hold a clip of {clip_frames}: raise val_frames")
    top = (frames.shape[-2] - crop_size) // 2
    left = (frames.shape[-1] - crop_size) // 2
    x = frames[:, : n * clip_frames, top : top + crop_size, left : left + crop_size]
    return x.unflatten(1, (n, clip_frames)).transpose(0, 1).contiguous()


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


class RandomCrops(Dataset):
    """Item i: ``{"image": [3, S, S]}``, a random crop (random photo, position, horizontal flip) drawn from
    ``(seed, i)`` alone. ``length`` is the virtual epoch size (crops never repeat within it)."""

    def __init__(self, photos: list[Tensor], crop_size: int, length: int, seed: int = 0, flip: bool = True):
        if not photos:
            raise ValueError("RandomCrops needs at least one photo")
        _check_crop(crop_size, photos, "photo")
        self.photos, self.crop_size, self.length, self.seed, self.flip = photos, crop_size, length, seed, flip

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        rng, s = _rng(self.seed, i), self.crop_size
        x = self.photos[rng.integers(len(self.photos))]
        top = rng.integers(x.shape[-2] - s + 1)
        left = rng.integers(x.shape[-1] - s + 1)
        crop = x[:, top : top + s, left : left + s]
        if self.flip and rng.random() < 0.5:
            crop = crop.flip(-1)
        return {"image": crop.contiguous()}


class RandomClips(Dataset):
    """Item i: ``{"video": [3, clip_frames, S, S]}``, a random clip (time offset, crop, horizontal flip) of
    ``frames [3, T, H, W]`` drawn from ``(seed, i)`` alone."""

    def __init__(
        self, frames: Tensor, clip_frames: int, crop_size: int, length: int, seed: int = 0, flip=True
    ):
        if frames.shape[1] < clip_frames:
            raise ValueError(f"{frames.shape[1]} training frames cannot hold a clip of {clip_frames}")
        _check_crop(crop_size, [frames], "GIF frame")
        self.frames, self.clip_frames, self.crop_size = frames, clip_frames, crop_size
        self.length, self.seed, self.flip = length, seed, flip

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        rng, s, x = _rng(self.seed, i), self.crop_size, self.frames
        t0 = rng.integers(x.shape[1] - self.clip_frames + 1)
        top = rng.integers(x.shape[-2] - s + 1)
        left = rng.integers(x.shape[-1] - s + 1)
        clip = x[:, t0 : t0 + self.clip_frames, top : top + s, left : left + s]
        if self.flip and rng.random() < 0.5:
            clip = clip.flip(-1)
        return {"video": clip.contiguous()}


class _Stacked(Dataset):
    """Fixed tensor ``[N, ...]`` as items ``{key: x[i]}``."""

    def __init__(self, key: str, x: Tensor):
        self.key, self.x = key, x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {self.key: self.x[i]}


class _JointBatches(Dataset):
    """Item j is a whole joint batch: ``{"image": [B_i, ...], "video": [B_v, ...]}`` from two per-sample
    datasets (batch j takes their items ``j·B .. j·B + B - 1``, cycling when one runs out, so a fixed val set
    comes out whole). Used with ``DataLoader(batch_size=None)``."""

    def __init__(self, images: Dataset, videos: Dataset, image_batch: int, video_batch: int, length: int):
        self.parts = (("image", images, image_batch), ("video", videos, video_batch))
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, j: int) -> dict[str, Tensor]:
        batch = {}
        for key, data, size in self.parts:
            idx = [(j * size + k) % len(data) for k in range(size)]
            batch[key] = torch.stack([data[i][key] for i in idx])
        return batch


class _BaseModule(L.LightningDataModule):
    def __init__(self, batch_size: int, num_workers: int, seed: int, epoch_size: int):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epoch_size < batch_size:
            raise ValueError(f"epoch_size={epoch_size} must be at least batch_size={batch_size}")
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.seed, self.epoch_size = int(seed), int(epoch_size)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _build(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:  # the data never changes: build once
            self.train_set, self.val_set = self._build()

    def _loader(self, dataset: Dataset, train: bool, batch_size: int | None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if train else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and batch_size is not None,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._loader(self.val_set, False, self.batch_size)


class PhotosDataModule(_BaseModule):
    """skimage photos as ``{"image": [B, 3, S, S]}`` crops in [-1, 1], split by photo.

    Args:
        photos: photo names (skimage.data); those in ``val_photos`` are held out, the rest are trained on.
        val_photos: held-out photo names (must be among ``photos``).
        crop_size: S.
        short_side: each photo is first resized so its shorter side is this (None: native size).
        grey: ``"rgb"`` or ``"skip"`` for grey photos.
        val_grid: validation uses a fixed ``val_grid × val_grid`` lattice of crops per held-out photo.
        flip: random horizontal flips for training.
        epoch_size: random crops per (virtual) epoch.
    """

    def __init__(
        self,
        photos=COLOUR_PHOTOS,
        val_photos=DEFAULT_VAL_PHOTOS,
        crop_size: int = 64,
        short_side: int | None = 256,
        grey: str = "rgb",
        val_grid: int = 4,
        flip: bool = True,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        epoch_size: int = 100_000,
    ):
        super().__init__(batch_size, num_workers, seed, epoch_size)
        photos, val_photos = [str(p) for p in photos], [str(p) for p in val_photos]
        unknown = sorted(set(val_photos) - set(photos))
        if unknown:
            raise ValueError(f"val_photos {unknown} are not in photos {photos}")
        self.train_names = [p for p in photos if p not in val_photos]
        if not self.train_names or not val_photos:
            raise ValueError(
                f"need at least one training and one val photo, got photos={photos}, val={val_photos}"
            )
        self.val_names = val_photos
        self.crop_size, self.short_side, self.grey = int(crop_size), short_side, grey
        self.val_grid, self.flip = int(val_grid), bool(flip)

    def val_images(self) -> Tensor:
        """The fixed held-out crops ``[len(val_photos)·val_grid², 3, S, S]``."""
        return fixed_crops(
            load_photos(self.val_names, self.short_side, self.grey), self.crop_size, self.val_grid
        )

    def _build(self) -> tuple[Dataset, Dataset]:
        train = load_photos(self.train_names, self.short_side, self.grey)
        if not train:
            raise ValueError(f"no training photos left after grey={self.grey!r}: {self.train_names}")
        crops = RandomCrops(train, self.crop_size, self.epoch_size, self.seed, self.flip)
        return crops, _Stacked("image", self.val_images())


class GifClipsDataModule(_BaseModule):
    """The skimage GIF as ``{"video": [B, 3, clip_frames, S, S]}`` clips in [-1, 1], split by time.

    Args:
        clip_frames: frames per clip (1 + 4k for a tokenizer with temporal stride 4: 5, 9, …).
        crop_size: S.
        short_side: the 25×14 frames are resized so the shorter side is this.
        val_frames: the last ``val_frames`` frames are held out; validation uses their non-overlapping,
            centre-cropped clips.
        flip: random horizontal flips for training.
        epoch_size: random clips per (virtual) epoch.
    """

    def __init__(
        self,
        clip_frames: int = 5,
        crop_size: int = 32,
        short_side: int | None = 32,
        val_frames: int = 10,
        flip: bool = True,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        epoch_size: int = 100_000,
    ):
        super().__init__(batch_size, num_workers, seed, epoch_size)
        if clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
        self.clip_frames, self.crop_size, self.short_side = int(clip_frames), int(crop_size), short_side
        self.val_frames, self.flip = int(val_frames), bool(flip)

    def split_frames(self) -> tuple[Tensor, Tensor]:
        """(train ``[3, T - val_frames, H, W]``, held-out ``[3, val_frames, H, W]``) frames."""
        frames = load_gif_frames(self.short_side)
        if not 0 < self.val_frames < frames.shape[1]:
            raise ValueError(f"val_frames must be in 1..{frames.shape[1] - 1}, got {self.val_frames}")
        cut = frames.shape[1] - self.val_frames
        return frames[:, :cut], frames[:, cut:]

    def val_clips(self) -> Tensor:
        """The fixed held-out clips ``[N, 3, clip_frames, S, S]``."""
        return fixed_clips(self.split_frames()[1], self.clip_frames, self.crop_size)

    def _build(self) -> tuple[Dataset, Dataset]:
        train, _ = self.split_frames()
        clips = RandomClips(train, self.clip_frames, self.crop_size, self.epoch_size, self.seed, self.flip)
        return clips, _Stacked("video", self.val_clips())


class PhotosGifDataModule(L.LightningDataModule):
    """Joint image + video batches ``{"image": [B_i, 3, S, S], "video": [B_v, 3, T, S', S']}``.

    ``photos`` and ``gif`` are the kwargs of :class:`PhotosDataModule` and :class:`GifClipsDataModule`; their
    ``batch_size`` is the size of each part of a joint batch. Train batch j draws image items ``j·B_i …`` and
    clip items ``j·B_v …`` of the two random datasets (shuffled batch order, seeded). Each val batch holds both
    parts too; the shorter val set cycles, so every held-out crop and clip is seen at least once.
    """

    def __init__(
        self, photos: dict | None = None, gif: dict | None = None, num_workers: int = 0, seed: int = 0
    ):
        super().__init__()
        self.photos = PhotosDataModule(**{"seed": seed, **dict(photos or {})})
        self.gif = GifClipsDataModule(**{"seed": seed + 1, **dict(gif or {})})  # different crops than photos
        self.num_workers, self.seed = int(num_workers), int(seed)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.photos.setup(stage)
        self.gif.setup(stage)
        bi, bv = self.photos.batch_size, self.gif.batch_size
        n_train = min(self.photos.epoch_size // bi, self.gif.epoch_size // bv)
        self.train_set = _JointBatches(self.photos.train_set, self.gif.train_set, bi, bv, n_train)
        vi, vv = self.photos.val_set, self.gif.val_set
        n_val = max(-(-len(vi) // bi), -(-len(vv) // bv))
        self.val_set = _JointBatches(vi, vv, bi, bv, n_val)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=None,  # items are whole batches already
            shuffle=train,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._loader(self.val_set, False)
