"""Class-labelled image shards (ImageNet-style) for the tokenizer and for token caching.

A shard sample holds an encoded image (``jpg`` / ``jpeg`` / ``png`` / ``webp``) and its class id ``cls`` (ASCII
integer). The transform is the official one (facts §5.1): ADM ``center_crop_arr`` to ``image_size`` then a
random horizontal flip. Batches: ``{"image": float32 [B, 3, S, S] in [-1, 1], "label": int64 [B],
"key": list[str]}`` (the sample keys, for tracing and tests).
"""

from __future__ import annotations

import io
import random
import re
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image

from grn.datamodules.bad_samples import BadSample, Limits
from grn.datamodules.wds import ShardDataModule

__all__ = ["IMAGE_EXTS", "ImageShardDataModule", "center_crop_arr", "decode_image", "decode_label", "to_tensor"]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# the formats PIL may open a shard's image as (a mislabelled PNG in a .jpg member still decodes; an EPS, PSD or
# TIFF does not get near its decoder). JPEG includes the multi-picture JPEGs (MPO) of cameras
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_INT = re.compile(r"\s*[+-]?[0-9]{1,18}\s*")


def center_crop_arr(image: Image.Image, image_size: int) -> Image.Image:
    """ADM centre crop: halve with BOX while the short side is >= 2·size, BICUBIC-resize the short side to
    ``image_size`` (rounded), then crop the centre ``image_size²``."""
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` → float32 ``[..., 3, H, W]`` in [-1, 1]."""
    t = torch.from_numpy(np.require(arr, requirements=["C", "W"])).movedim(-1, -3)
    return t.to(torch.float32).div_(127.5).sub_(1.0)


def decode_image(sample: dict[str, Any], limits: Limits = Limits()) -> Image.Image:
    """The sample's image as RGB PIL; ``missing_key`` / ``wrong_type`` / ``decode_image`` otherwise, and
    ``too_large`` / ``aspect_ratio`` where the size in its header is over ``limits`` — checked before a pixel is
    decoded (``Image.open`` only reads the header)."""
    key = next((k for k in IMAGE_EXTS if k in sample), None)
    if key is None:
        raise BadSample("missing_key", f"no image ({'/'.join(IMAGE_EXTS)}) among {sorted(sample)}")
    data = sample[key]
    if not isinstance(data, (bytes, bytearray)):
        raise BadSample("wrong_type", f"{key} is {type(data).__name__}, not bytes")
    try:
        with warnings.catch_warnings():  # the size is checked below, against data.max_image_pixels
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as err:
        raise BadSample("too_large", f"{key}: {err}") from None
    except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise BadSample("decode_image", f"{type(err).__name__}: {err}") from None
    width, height = image.size
    limits.check_size(width, height, f"{key} image", limits.max_image_pixels, "max_image_pixels")
    try:
        image.load()  # decode now, inside the handler, not lazily later
        rgb = image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - PIL raises many types (OSError, ValueError, SyntaxError, ...)
        raise BadSample("decode_image", f"{type(err).__name__}: {err}") from None
    if rgb.size != (width, height):
        raise BadSample("decode_image", f"{key} decoded to {rgb.size}, its header says {(width, height)}")
    return rgb


def decode_label(sample: dict[str, Any], key: str = "cls", num_classes: int | None = None) -> int:
    """The sample's integer label: ``missing_key`` / ``wrong_type`` (not a plain decimal integer) / ``bad_value``
    (outside ``[0, num_classes)``) otherwise."""
    if key not in sample:
        raise BadSample("missing_key", f"no {key!r} among {sorted(sample)}")
    value = sample[key]
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise BadSample("wrong_type", f"{key}={bytes(value[:20])!r} is not an integer") from None
    if isinstance(value, str):
        if not _INT.fullmatch(value):
            raise BadSample("wrong_type", f"{key}={value[:20]!r} is not an integer")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadSample("wrong_type", f"{key} is a {type(value).__name__}, not an integer")
    if value < 0 or (num_classes is not None and value >= num_classes):
        raise BadSample("bad_value", f"{key}={value} outside [0, {num_classes})")
    return value


class ClassImageDecoder:
    """Picklable decoder (DataLoader workers): ADM crop + optional flip + label."""

    def __init__(self, image_size: int, flip: bool, num_classes: int | None, limits: Limits = Limits()) -> None:
        self.image_size, self.flip, self.num_classes = int(image_size), bool(flip), num_classes
        self.limits = limits

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        label = decode_label(sample, num_classes=self.num_classes)
        arr = np.asarray(center_crop_arr(decode_image(sample, self.limits), self.image_size))
        if self.flip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        return {"image": to_tensor(arr), "label": torch.tensor(label, dtype=torch.int64), "key": sample["__key__"]}


class ImageShardDataModule(ShardDataModule):
    """ImageNet-style class-labelled image shards (see :class:`~grn.datamodules.wds.ShardDataModule` for the
    pipeline arguments).

    Args:
        image_size: side of the ADM centre crop (256 for the paper's C2I).
        flip: random horizontal flip on train batches (never on val).
        num_classes: labels must lie in ``[0, num_classes)``; others are counted as ``bad_value``.
    """

    def __init__(self, image_size: int = 256, flip: bool = True, num_classes: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.flip = bool(flip)
        self.num_classes = int(num_classes)

    def transform_spec(self) -> dict[str, Any]:
        return {**super().transform_spec(), "image_size": self.image_size, "crop": "adm_center"}

    def decoder(self, split: str) -> ClassImageDecoder:
        return ClassImageDecoder(self.image_size, self.flip and split == "train", self.num_classes, self.limits)
