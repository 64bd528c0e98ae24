"""Text token caches: text–image / text–video shards encoded once by the frozen tokenizer *and* the frozen text
encoder, so T2I/T2V training reads token maps and caption features and never runs either encoder (umT5-XXL alone
holds 5.7B parameters).

Layout of one cache (``<cache_dir>/text_tokens/<tokenizer sha256[:16]>-<settings sha256[:8]>/``, the settings
being the source's transform, the text encoder's config and the feature dtype):

* ``train-000000.tar`` … (and ``val-*.tar``): one sample per image/clip with ``tok`` (packed HBQ index labels, as
  :mod:`grn.datamodules.token_shards`), ``json`` (the caption-relevant jsonl fields, every caption the official
  rules can pick for them, and each caption's feature length) and ``text.npy`` (the features of all those
  captions, concatenated: ``[sum L_i, D]``);
* ``null.npy`` — the features of the empty caption (caption dropout, the unconditional branch);
* ``meta.json`` — written last, so its presence means the cache is complete.

Every caption a sample can get is cached, so the caption is still drawn at every read, with the official rules
(short caption with probability ``short_caption_prob``; MiniCPM half of the time). The pixels are fixed per sample
(the bucket's centre crop; for video the seeded clip of the single pass), as in any token cache.

Batches (one aspect-ratio bucket each): ``{"tokens": int64 [B, d, (T,) h, w], "text": float16 [B, L, D]
(zero-padded), "text_lens": int64 [B], "null_text": float16 [L0, D], "caption": list[str], "key": list[str]}``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from grn.datamodules.bad_samples import BadSample
from grn.datamodules.buckets import BucketBatcher
from grn.datamodules.captions import CaptionRules
from grn.datamodules.seq_packing import PackingBatcher
from grn.datamodules.token_shards import (
    CacheShardDataModule,
    file_sha256,
    pack_tokens,
    read_meta,
    unpack_tokens,
)
from grn.datamodules.wds import ShardDataModule, collate
from grn.datamodules.writers import ShardWriter
from grn.io import atomic_write_bytes, atomic_write_json

__all__ = ["TextTokenShardDataModule", "ensure_text_token_cache", "text_cache_dir_for"]

_DTYPES = {"float16": np.float16, "float32": np.float32}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _load_npy(data: bytes, dtype: np.dtype | None = None) -> np.ndarray:
    """An ``.npy`` payload as a read-only array over ``data``: its header is read first, and an array whose
    header does not match its byte count, or of another dtype than ``dtype``, raises ``wrong_type`` — nothing is
    allocated from what a damaged header claims."""
    if not isinstance(data, (bytes, bytearray)):
        raise BadSample("wrong_type", f"text features are a {type(data).__name__}, not bytes")
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"npy version {version}")
        shape, fortran, found = read_header[version](f)
    except Exception as err:  # noqa: BLE001 - numpy parses the header with tokenize and ast: TokenError, ...
        raise BadSample("wrong_type", f"text features do not load: {type(err).__name__}: {err}") from None
    allowed = [dtype] if dtype is not None else [np.dtype(t) for t in _DTYPES.values()]
    if found not in allowed or fortran:
        raise BadSample("wrong_type", f"text features of dtype {found}{' (Fortran order)' if fortran else ''}, "
                                      f"expected {dtype}")
    count = math.prod(shape)
    if count * found.itemsize != len(data) - f.tell():
        raise BadSample("wrong_type", f"text features of shape {shape} do not fill {len(data) - f.tell()} bytes")
    return np.frombuffer(data, dtype=found, count=count, offset=f.tell()).reshape(shape)


def _encoder_spec(text_encoder: dict[str, Any]) -> dict[str, Any]:
    """The encoder's config, with size and mtime of every file it names: new weights at the same path, new cache
    (hashing an 11 GB file at every start-up would cost minutes)."""
    spec: dict[str, Any] = {"config": text_encoder, "files": {}}
    for value in text_encoder.values():
        if isinstance(value, str) and os.path.isfile(value):
            st = os.stat(value)
            spec["files"][value] = [st.st_size, int(st.st_mtime)]
    return spec


def text_cache_dir_for(root: str | os.PathLike, tokenizer_ckpt: str | os.PathLike, settings: dict[str, Any]) -> Path:
    """``<root>/text_tokens/<ckpt sha256[:16]>-<settings sha256[:8]>``."""
    s = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return Path(root) / "text_tokens" / f"{file_sha256(tokenizer_ckpt)[:16]}-{s}"


def _features(features: torch.Tensor, dtype: str) -> np.ndarray:
    out = features.float().cpu().numpy().astype(_DTYPES[dtype])
    if not np.isfinite(out).all():
        raise ValueError(f"caption features overflow {dtype}; build the cache with text_dtype=float32")
    return out


@torch.no_grad()
def ensure_text_token_cache(
    source: ShardDataModule,
    tokenizer_ckpt: str | os.PathLike,
    text_encoder: dict[str, Any],
    cache_root: str | os.PathLike,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    text_dtype: str = "float16",
    max_count: int = 1000,
) -> Path:
    """The text token cache of a :class:`~grn.datamodules.text.TextImageDataModule` or ``TextVideoDataModule``:
    found, or built once now (train and, when the source has them, val shards; bad samples are skipped and
    counted as in training). ``text_encoder`` is the Hydra config of the caption encoder. Returns the folder."""
    from hydra.utils import instantiate

    from grn.checkpoints import load_tokenizer
    from grn.checkpoints.values import plain_config
    from grn.models.text_encoder import TextEncoder

    if text_dtype not in _DTYPES:
        raise ValueError(f"text_dtype must be one of {sorted(_DTYPES)}, got {text_dtype!r}")
    if not Path(tokenizer_ckpt).is_file():
        raise FileNotFoundError(f"tokenizer checkpoint not found: {tokenizer_ckpt}")
    kind = source.kind
    encoder_cfg = plain_config(text_encoder)
    settings = {"transform": source.transform_spec(), "text_encoder": _encoder_spec(encoder_cfg),
                "text_dtype": text_dtype}
    out = text_cache_dir_for(cache_root, tokenizer_ckpt, settings)
    if (out / "meta.json").is_file():
        return out
    tokenizer = load_tokenizer(tokenizer_ckpt, map_location=device)
    encoder: TextEncoder = instantiate(encoder_cfg).to(device)
    rounds = int(tokenizer.hbq_rounds)
    info: dict[str, Any] = {
        "kind": kind, "hbq_rounds": rounds, "text_dim": encoder.dim, "text_dtype": text_dtype,
        "tokenizer_ckpt": os.path.abspath(tokenizer_ckpt), "tokenizer_sha256": out.name.split("-")[0],
        "settings": settings, "splits": {},
    }
    rules: CaptionRules = getattr(source, "caption_rules", None) or CaptionRules(0.2 if kind == "image" else 0.0)
    info["caption_rules"] = rules.spec()
    splits = ["train"] + (["val"] if source.val_shards is not None else [])
    for split in splits:
        view = source.single_pass(split, batch_size)
        with ShardWriter(out, prefix=split, max_count=max_count) as writer:
            for batch in view.train_dataloader():
                batch = view.record(batch)
                tokens = tokenizer.encode(batch[kind].to(device), target="index").cpu()  # [B, d, (T,) h, w]
                fields = [json.loads(f) for f in batch["caption_fields"]]
                candidates = [rules.candidates(kind, f) for f in fields]
                unique = sorted({c for cs in candidates for c in cs})
                feats = dict(zip(unique, encoder.encode_texts(unique), strict=True))
                for i, key in enumerate(batch["key"]):
                    parts = [_features(feats[c], text_dtype) for c in candidates[i]]
                    writer.write({
                        "__key__": key,
                        "tok": pack_tokens(tokens[i], rounds),
                        "json": {"fields": fields[i], "captions": candidates[i], "lens": [len(p) for p in parts]},
                        "text.npy": _npy(np.concatenate(parts)),
                    })
                info["latent_dim"] = int(tokens.shape[1])
            bad = view.bad_samples
        info["splits"][split] = {"shards": [p.name for p in writer.shards], "num_samples": writer.count,
                                 "bad_samples": {k: v for k, v in bad.items() if v}}
    atomic_write_bytes(_npy(_features(encoder.encode_texts([""])[0], text_dtype)), out / "null.npy")
    atomic_write_json(info, out / "meta.json")  # last: marks the cache complete
    return out


class TextTokenDecoder:
    """``tok`` + ``json`` + ``text.npy`` → ``{"tokens", "text" [L, D], "caption", "key", "bucket"}``, and for video
    ``first_frame_condition`` (bool: the line's flag). The caption is drawn with the official rules from the cached
    candidates; the bucket is the token shape. The rules are those the cache was written with
    (``meta["caption_rules"]``), except that images take ``short_caption_prob``."""

    def __init__(self, kind: str, short_caption_prob: float, meta: dict[str, Any] | None = None) -> None:
        self.kind, self.short_caption_prob = kind, float(short_caption_prob)
        meta = meta or {}
        stored = dict(meta.get("caption_rules") or {})
        if kind == "image":
            stored["short_caption_prob"] = self.short_caption_prob
        self.rules = CaptionRules(**stored)
        self.hbq_rounds, self.latent_dim = meta.get("hbq_rounds"), meta.get("latent_dim")
        self.text_dim = meta.get("text_dim")
        self.dtype = np.dtype(_DTYPES[meta["text_dtype"]]) if meta.get("text_dtype") in _DTYPES else None

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        for name in ("tok", "json", "text.npy"):
            if name not in sample:
                raise BadSample("missing_key", f"no {name} among {sorted(sample)}")
        tokens = unpack_tokens(sample["tok"], self.hbq_rounds, self.latent_dim)
        fields, captions, lens = _cached_captions(sample["json"])
        caption = self.rules.choose(self.kind, fields, rng)
        if caption not in captions:
            raise BadSample("wrong_type", f"caption {caption[:40]!r} is not among the cached ones")
        feats = _load_npy(sample["text.npy"], self.dtype)
        if feats.ndim != 2 or feats.shape[0] != sum(lens) or (self.text_dim and feats.shape[1] != self.text_dim):
            raise BadSample("wrong_type", f"text features of shape {feats.shape} do not hold lengths {lens} x "
                                          f"text_dim={self.text_dim}")
        if not np.isfinite(feats).all():
            raise BadSample("bad_value", "text features hold NaN or inf")
        i = captions.index(caption)
        start = sum(lens[:i])
        text = torch.from_numpy(np.array(feats[start : start + lens[i]]))  # a copy: the bytes buffer is read-only
        out = {"tokens": tokens, "text": text, "caption": caption, "key": sample["__key__"],
               "bucket": tuple(tokens.shape)}
        if self.kind == "video":  # the line asks for the official first-frame condition (§B1): the trainer obeys
            out["first_frame_condition"] = fields.get("first_frame_condition") is True
        return out


def _cached_captions(data: Any) -> tuple[dict[str, Any], list[str], list[int]]:
    """``(fields, captions, lens)`` of a text cache sample's ``json``; ``wrong_type`` / ``bad_value`` where they are
    not a dict, a list of strings and as many positive integers."""
    try:
        info = json.loads(data)
        fields, captions, lens = info["fields"], info["captions"], info["lens"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as err:
        raise BadSample("wrong_type", f"text cache json: {type(err).__name__}: {str(err)[:80]}") from None
    if not isinstance(fields, dict) or not isinstance(captions, list) or not isinstance(lens, list) \
            or not all(isinstance(c, str) for c in captions) \
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in lens):
        raise BadSample("wrong_type", "text cache json: fields, captions, lens are not a dict, strings, integers")
    if len(lens) != len(captions) or not captions or min(lens) < 1:
        raise BadSample("bad_value", f"text cache json: {len(captions)} captions with lengths {lens[:8]}")
    return fields, captions, lens


class TextFeatureBatcher(BucketBatcher):
    """Buckets by token shape; pads the caption features of a batch and adds their lengths and the empty
    caption's features."""

    def __init__(self, batch_size: int, drop_last: bool, null_text: torch.Tensor) -> None:
        super().__init__(batch_size, drop_last)
        self.null_text = null_text

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        texts = [s.pop("text") for s in samples]
        batch = collate(samples)
        batch["text"] = pad_sequence(texts, batch_first=True)                      # [B, L, D]
        batch["text_lens"] = torch.tensor([t.shape[0] for t in texts], dtype=torch.int64)
        batch["null_text"] = self.null_text                                        # [L0, D]
        return batch


class TextTokenShardDataModule(CacheShardDataModule):
    """T2I / T2V batches straight from a text token cache: no tokenizer, no text encoder, no pixels.

    Args:
        cache: the cache folder (with ``meta.json``), as printed by ``scripts/cache_text_tokens.py``.
        short_caption_prob: image captions: chance of the short caption (official 0.2).
        packing: ``{"budget", "dense_ratio", "window"}``: every batch is one packed sequence
            (:class:`~grn.datamodules.seq_packing.PackingBatcher`) instead of ``batch_size`` same-shape samples;
            ``batch_size`` then only sets the epoch length (``epoch_samples / batch_size`` batches).
        **kwargs: pipeline settings of :class:`~grn.datamodules.wds.ShardDataModule`.
    """

    provides_text_features = True

    def __init__(self, cache: str, short_caption_prob: float = 0.2, packing: dict | None = None, **kwargs) -> None:
        super().__init__(cache, **kwargs)
        self.short_caption_prob = float(short_caption_prob)
        self.packing = dict(packing) if packing else None
        try:
            self.null_text = torch.from_numpy(np.load(self.cache / "null.npy", allow_pickle=False))
        except Exception as err:  # noqa: BLE001 - missing, cut or damaged: one line saying what to do
            raise ValueError(f"{self.cache / 'null.npy'} does not load ({type(err).__name__}: {err}); delete the "
                             "cache folder to rebuild it") from None

    @property
    def kind(self) -> str:
        """``"image"`` or ``"video"``: which caption rules the reader applies."""
        return str(self.meta["kind"])

    def decoder(self, split: str) -> TextTokenDecoder:
        return TextTokenDecoder(self.kind, self.short_caption_prob, self.meta)

    def batcher(self, split: str) -> TextFeatureBatcher | PackingBatcher:
        drop_last = self.drop_last if split == "train" else False
        if self.packing:
            return PackingBatcher(self.packing["budget"], self.packing.get("dense_ratio"),
                                  self.packing.get("window", 256), drop_last, null_text=self.null_text)
        return TextFeatureBatcher(self.batch_size, drop_last, self.null_text)


def iter_cache_samples(cache: str | os.PathLike, split: str = "train") -> Iterator[dict[str, Any]]:
    """Raw samples of a cache in shard order (for inspection and tests)."""
    import webdataset as wds

    meta = read_meta(cache)
    for shard in meta["splits"][split]["shards"]:
        yield from wds.WebDataset(str(Path(cache) / shard), shardshuffle=False)
