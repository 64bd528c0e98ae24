"""Token caches: a dataset encoded once by a frozen tokenizer into shards the generator reads directly.

Layout of one cache (``<cache_dir>/tokens/<tokenizer sha256[:16]>-<transform sha256[:8]>/``):

* ``train-000000.tar`` … (and ``val-*.tar``): one sample per image/video with ``tok`` (the HBQ bits of the
  index labels, ``np.packbits``-packed — M bits per symbol instead of 64), optionally ``tokflip`` (the tokens
  of the horizontally flipped input: the encoder is deterministic, so both flips are cached once and the reader
  picks one per sample), and ``cls``;
* ``meta.json`` — written last, so its presence means the cache is complete: the tokenizer checkpoint's hash,
  the transform, ``hbq_rounds``, ``latent_dim``, the token shape, ``num_classes`` and the shard names.

Batches: ``{"tokens": int64 [B, d, h, w] (video: [B, d, T, h, w]) index labels, "label": int64 [B], "key"}``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grn import hbq
from grn.datamodules.bad_samples import BadSample
from grn.datamodules.images import decode_label
from grn.datamodules.wds import ShardDataModule
from grn.datamodules.writers import ShardWriter
from grn.io import atomic_write_json

__all__ = [
    "CacheShardDataModule",
    "TokenShardDataModule",
    "cache_dir_for",
    "ensure_token_cache",
    "file_sha256",
    "pack_tokens",
    "read_meta",
    "unpack_tokens",
    "write_token_cache",
]


# --------------------------------------------------------------------------------------------- bit packing
_MAGIC = b"GRNT"  # header: magic, M (u8), ndim (u8), shape (ndim x u32, little-endian); then the packed bits


def pack_tokens(index: torch.Tensor, hbq_rounds: int) -> bytes:
    """int64 index labels ``[d, (T,) h, w]`` → bytes: a 6 + 4·ndim byte header, then the HBQ bits ``[M, d, …]``
    packed with ``np.packbits`` (M bits per symbol)."""
    if index.dtype != torch.int64 or index.min() < 0 or index.max() >= 2**hbq_rounds:
        raise ValueError(f"index labels must be int64 in [0, 2^{hbq_rounds}), got {index.dtype}")
    bits = hbq.index_to_bits(index.unsqueeze(0).cpu(), hbq_rounds)[0].numpy()  # bool [M, d, ...]
    header = _MAGIC + struct.pack(f"<BB{index.dim()}I", hbq_rounds, index.dim(), *index.shape)
    return header + np.packbits(bits.reshape(-1)).tobytes()


MAX_SYMBOLS = 1 << 24  # tokens of one sample (81 frames at 2M pixels: 64 x 21 x 68 x 120 = 11M)


def unpack_tokens(data: bytes, hbq_rounds: int | None = None, latent_dim: int | None = None,
                  max_symbols: int = MAX_SYMBOLS) -> torch.Tensor:
    """Inverse of :func:`pack_tokens`: int64 index labels ``[d, (T,) h, w]``. Bad bytes raise ``BadSample``
    (``wrong_type``), as do tokens of another M than ``hbq_rounds`` or another d than ``latent_dim`` (when given);
    more than ``max_symbols`` tokens raise ``too_large`` before anything is unpacked."""
    if not isinstance(data, (bytes, bytearray)) or len(data) < 6 or data[:4] != _MAGIC:
        raise BadSample("wrong_type", "token payload does not start with the GRNT header")
    rounds, ndim = data[4], data[5]
    if len(data) < 6 + 4 * ndim or not 1 <= rounds <= 16 or not 1 <= ndim <= 8:
        raise BadSample("wrong_type", f"token header is damaged (M={rounds}, ndim={ndim})")
    if hbq_rounds is not None and rounds != hbq_rounds:
        raise BadSample("wrong_type", f"tokens of M={rounds} in a cache of M={hbq_rounds}")
    shape = struct.unpack_from(f"<{ndim}I", data, 6)
    if min(shape) < 1:
        raise BadSample("wrong_type", f"token shape {shape} is empty")
    if latent_dim is not None and shape[0] != latent_dim:
        raise BadSample("wrong_type", f"tokens of shape {shape} in a cache of latent_dim={latent_dim}")
    if math.prod(shape) > max_symbols:
        raise BadSample("too_large", f"tokens of shape {shape}: more than {max_symbols} symbols")
    count = rounds * math.prod(shape)  # Python ints: a damaged shape cannot overflow into a matching size
    packed = np.frombuffer(data, dtype=np.uint8, offset=6 + 4 * ndim)
    if packed.size != -(-count // 8):
        raise BadSample("wrong_type", f"token payload of {packed.size} bytes does not hold shape {shape} x M={rounds}")
    bits = np.unpackbits(packed, count=count).reshape(1, rounds, *shape)
    return hbq.bits_to_index(torch.from_numpy(bits))[0]


# -------------------------------------------------------------------------------------------- cache naming
def file_sha256(path: str | os.PathLike) -> str:
    """The file's sha256 (hex). Remembered per (path, size, modification time) within a process: a cache is looked
    up in ``prepare_data`` and again in ``setup``, and a tokenizer checkpoint can be gigabytes."""
    st = os.stat(path)
    return _sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir_for(root: str | os.PathLike, tokenizer_ckpt: str | os.PathLike, transform: dict[str, Any]) -> Path:
    """``<root>/tokens/<ckpt sha256[:16]>-<transform sha256[:8]>``: a new tokenizer or transform, a new cache."""
    t = hashlib.sha256(json.dumps(transform, sort_keys=True).encode()).hexdigest()[:8]
    return Path(root) / "tokens" / f"{file_sha256(tokenizer_ckpt)[:16]}-{t}"


def read_meta(cache: str | os.PathLike) -> dict[str, Any]:
    path = Path(cache) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no complete token cache at {cache} (meta.json missing); build it with scripts/cache_tokens.py"
        )
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete the cache folder to rebuild it") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("splits"), dict):
        raise ValueError(f"{path} has no 'splits' object; delete the cache folder to rebuild it")
    return meta


# ------------------------------------------------------------------------------------------------- writing
@torch.no_grad()
def write_token_cache(
    tokenizer: torch.nn.Module,
    batches: dict[str, Iterable[dict[str, Any]]],
    out_dir: str | os.PathLike,
    *,
    hbq_rounds: int,
    meta: dict[str, Any],
    flip: bool = True,
    max_count: int = 1000,
) -> dict[str, Any]:
    """Encode every batch once and write token shards + ``meta.json``.

    Args:
        tokenizer: has ``encode(x, target="index")``; pixels go to its device.
        batches: per split (``"train"``, ``"val"``), an iterable of ``{"image": [B,3,H,W] | "video": [B,3,T,H,W],
            "label": [B], "key": list[str]}`` in [-1, 1], unflipped.
        flip: also store the tokens of the horizontally flipped input (``tokflip``).
        meta: extra fields (tokenizer hash, transform, num_classes) for ``meta.json``.
    Returns:
        the meta dict written.
    """
    out_dir = Path(out_dir)
    device = next(tokenizer.parameters()).device
    info: dict[str, Any] = {"hbq_rounds": hbq_rounds, "flip": flip, **meta, "splits": {}}
    for split, source in batches.items():
        with ShardWriter(out_dir, prefix=split, max_count=max_count) as writer:
            for batch in source:
                x = batch["video"] if "video" in batch else batch["image"]
                x = x.to(device)
                tokens = tokenizer.encode(x, target="index").cpu()          # [B, d, (T,) h, w]
                flipped = tokenizer.encode(x.flip(-1), target="index").cpu() if flip else None
                for i, key in enumerate(batch["key"]):
                    sample = {"__key__": key, "tok": pack_tokens(tokens[i], hbq_rounds)}
                    if "label" in batch:
                        sample["cls"] = int(batch["label"][i])
                    if flipped is not None:
                        sample["tokflip"] = pack_tokens(flipped[i], hbq_rounds)
                    writer.write(sample)
                info["latent_dim"] = int(tokens.shape[1])
                info["token_shape"] = list(tokens.shape[1:])
        info["splits"][split] = {"shards": [p.name for p in writer.shards], "num_samples": writer.count}
    atomic_write_json(info, out_dir / "meta.json")  # last: marks the cache complete
    return info


# ------------------------------------------------------------------------------------------------- reading
class TokenDecoder:
    """``tok`` (+ ``tokflip``) + ``cls`` → ``{"tokens", "label", "key"}``; picklable."""

    def __init__(self, flip: bool, num_classes: int | None, token_shape: list[int] | None,
                 hbq_rounds: int | None = None) -> None:
        self.flip, self.num_classes, self.hbq_rounds = flip, num_classes, hbq_rounds
        self.token_shape = tuple(token_shape) if token_shape else None

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        name = "tokflip" if self.flip and "tokflip" in sample and rng.random() < 0.5 else "tok"
        if name not in sample:
            raise BadSample("missing_key", f"no tok among {sorted(sample)}")
        tokens = unpack_tokens(sample[name], self.hbq_rounds)
        if self.token_shape is not None and tuple(tokens.shape) != self.token_shape:
            raise BadSample("wrong_type", f"tokens of shape {tuple(tokens.shape)}, cache has {self.token_shape}")
        out = {"tokens": tokens, "key": sample["__key__"]}
        if self.num_classes is not None:  # class-labelled cache
            out["label"] = torch.tensor(decode_label(sample, num_classes=self.num_classes), dtype=torch.int64)
        return out


@torch.no_grad()
def ensure_token_cache(
    source: ShardDataModule,
    tokenizer_ckpt: str | os.PathLike,
    cache_root: str | os.PathLike,
    *,
    flip: bool = True,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    max_count: int = 1000,
) -> Path:
    """The token cache of ``source`` under ``tokenizer_ckpt``: found, or built once now.

    The source is read by :meth:`~grn.datamodules.wds.ShardDataModule.single_pass` (fixed order, no random
    flip; a video source keeps its seeded clip choice), train and — when it has them — val shards. Returns the
    cache folder (see the module docstring for its layout).
    """
    from grn.checkpoints import load_tokenizer  # local: the reader side never needs the tokenizer's code

    spec = {**source.transform_spec(), "flip": bool(flip)}
    out = cache_dir_for(cache_root, tokenizer_ckpt, spec)
    if (out / "meta.json").is_file():
        return out
    tokenizer = load_tokenizer(tokenizer_ckpt, map_location=device)

    def batches(view: ShardDataModule) -> Iterator[dict[str, Any]]:
        for batch in view.train_dataloader():
            yield view.record(batch)

    splits = {"train": batches(source.single_pass("train", batch_size))}
    if source.val_shards is not None:
        splits["val"] = batches(source.single_pass("val", batch_size))
    write_token_cache(
        tokenizer, splits, out, hbq_rounds=int(tokenizer.hbq_rounds), flip=flip, max_count=max_count,
        meta={"tokenizer_ckpt": os.path.abspath(tokenizer_ckpt), "tokenizer_sha256": out.name.split("-")[0],
              "transform": spec, "num_classes": getattr(source, "num_classes", None)},
    )
    return out


def _pattern(cache: Path, shards: list[str]) -> list[str] | None:
    return [str(cache / s) for s in shards] or None


class CacheShardDataModule(ShardDataModule):
    """A shard pipeline over the train / val shards a cache's ``meta.json`` lists (``self.meta``)."""

    def __init__(self, cache: str | os.PathLike, **kwargs) -> None:
        self.cache = Path(cache)
        self.meta = read_meta(self.cache)
        splits = self.meta["splits"]
        if not splits.get("train", {}).get("shards"):
            raise ValueError(f"cache {cache} has no train shards")
        # a list of single-shard sources with equal weights is the same as one pattern over them
        super().__init__(
            train_shards=_pattern(self.cache, splits["train"]["shards"]),
            val_shards=_pattern(self.cache, splits.get("val", {}).get("shards", [])),
            **kwargs,
        )

    @property
    def latent_dim(self) -> int:
        return int(self.meta["latent_dim"])

    @property
    def hbq_rounds(self) -> int:
        return int(self.meta["hbq_rounds"])


class TokenShardDataModule(CacheShardDataModule):
    """Generator batches straight from a token cache (no tokenizer, no pixels in the training loop).

    Args:
        cache: the cache folder (with ``meta.json``), as printed by ``scripts/cache_tokens.py``.
        flip: pick the flipped tokens with probability 1/2 when the cache has them (train only).
        **kwargs: pipeline settings of :class:`~grn.datamodules.wds.ShardDataModule` (batch_size, num_workers,
            resampled, epoch_samples, shuffle_buffer, seed, ...).
    """

    def __init__(self, cache: str, flip: bool = True, **kwargs) -> None:
        super().__init__(cache, **kwargs)
        self.flip = bool(flip)

    @property
    def num_classes(self) -> int | None:
        n = self.meta.get("num_classes")
        return None if n is None else int(n)

    def decoder(self, split: str) -> TokenDecoder:
        return TokenDecoder(self.flip and split == "train", self.num_classes, self.meta.get("token_shape"),
                            self.meta.get("hbq_rounds"))


def iter_tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                        key_prefix: str = "") -> Iterator[dict[str, Any]]:
    """In-memory ``images [N, 3, H, W]``, ``labels [N]`` → batches for :func:`write_token_cache` (keys by index)."""
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        yield {"image": images[start:stop], "label": labels[start:stop],
               "key": [f"{key_prefix}{i:09d}" for i in range(start, stop)]}
