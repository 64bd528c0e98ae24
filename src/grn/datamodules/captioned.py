"""Captioned real data for text-to-image and text-to-video on a CPU: the scikit-learn digits with captions that
name the digit ("a handwritten seven"), and *moving digits* — a real digit sliding across a black frame, captioned
with the digit and the direction ("a handwritten seven moving left").

Both are pure functions of (split, seed): the same call returns the same tensors. Train / val come from the fixed
stratified digits split of :func:`grn.datamodules.builtin.load_digits_split`, so no digit image is in both.

Items: ``{"image": float [3, S, S] in [-1, 1], "label", "caption"}`` and
``{"video": float [3, T, S, S] in [-1, 1], "label", "direction", "caption"}``; the default collate stacks tensors
and turns captions into a list of strings. ``kind="mixed"`` holds both in one set (:class:`MixedCaptionedDataset`,
the official T2I/T2V trainer's image + video mix); items of different shapes batch only through sequence packing
(:class:`EncodedCaptionedDataModule` with ``pack_budget``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from grn.datamodules.builtin import load_digits_split
from grn.datamodules.joint import JointShards, JointSource
from grn.datamodules.seq_packing import PackedSampler, PackedView
from grn.datamodules.tokens import CacheReaderMixin, InMemoryLoaders, pipeline_settings
from grn.datamodules.wds import ShardDataModule
from grn.prompts import with_prefix

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIRECTIONS = ("left", "right", "up", "down")
# unit steps (dx, dy) in image coordinates (y grows downwards)
_STEP = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
_IMAGE_TEMPLATES = ("a handwritten {w}", "the digit {w}", "a {w} written by hand")
_VIDEO_TEMPLATES = ("a handwritten {w} moving {d}", "the digit {w} sliding {d}")


def digit_caption(label: int, variant: int = 0) -> str:
    """Caption of digit ``label``; ``variant`` picks one of a few phrasings (all name the digit)."""
    return _IMAGE_TEMPLATES[variant % len(_IMAGE_TEMPLATES)].format(w=DIGIT_WORDS[label])


def motion_caption(label: int, direction: int, variant: int = 0) -> str:
    """Caption of a moving digit: names the digit and the direction."""
    return _VIDEO_TEMPLATES[variant % len(_VIDEO_TEMPLATES)].format(w=DIGIT_WORDS[label], d=DIRECTIONS[direction])


def captioned_digits(split: str, image_size: int = 32, seed: int = 0) -> tuple[Tensor, Tensor, list[str]]:
    """Digits with captions: images ``[N, 3, S, S]`` in [-1, 1], labels ``[N]``, N captions (phrasing varies)."""
    images, labels = load_digits_split(split, image_size=image_size, seed=seed)
    captions = [digit_caption(int(y), i) for i, y in enumerate(labels.tolist())]
    return images, labels, captions


def moving_digits(
    split: str,
    frames: int = 9,
    image_size: int = 32,
    digit_size: int = 16,
    clips_per_digit: int = 1,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """Clips of a real digit sliding across a black frame at constant speed.

    Each digit image of ``split`` gives ``clips_per_digit`` clips; every clip gets a direction (left / right / up /
    down, cycled so all four are balanced) and a random start on the line across the frame, drawn from
    ``seed``. The digit moves ``(image_size - digit_size) / (frames - 1)`` pixels per frame, from one border
    to the other, so the direction is visible between any two frames.

    Returns:
        clips ``float32 [N, 3, T, S, S]`` in [-1, 1], labels ``int64 [N]``, directions ``int64 [N]`` (index into
        :data:`DIRECTIONS`), N captions.
    """
    if frames < 2 or (frames - 1) % 4:
        raise ValueError(f"frames must be 1 + 4k with k >= 1 (the tokenizer's temporal stride), got {frames}")
    if not 0 < digit_size < image_size:
        raise ValueError(f"digit_size must be in (0, image_size={image_size}), got {digit_size}")
    digits, labels = load_digits_split(split, image_size=digit_size, seed=seed)
    digits = digits.repeat_interleave(clips_per_digit, 0)
    labels = labels.repeat_interleave(clips_per_digit, 0)
    n = labels.shape[0]
    g = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
    directions = (torch.arange(n) + torch.randint(0, 4, (1,), generator=g)) % 4
    # where the digit's top-left corner sits: travel along the motion axis, a random offset across it
    travel = float(image_size - digit_size)
    along = torch.linspace(0.0, travel, frames)  # [T]
    across = torch.rand(n, generator=g) * travel  # [N]
    step = _STEP[directions]  # [N, 2]
    start = torch.where(step < 0, torch.full_like(step, travel), torch.zeros_like(step))  # moving -x starts right
    pos = start[:, None, :] + step[:, None, :] * along[None, :, None]  # [N, T, 2] for the moving axis
    still = (step == 0)[:, None, :]
    pos = torch.where(still, across[:, None, None].expand(n, frames, 2), pos)
    # paste by sampling: a translation per (clip, frame), in grid_sample's normalised coordinates
    canvas = F.pad((digits[:, :1] + 1) / 2, (0, image_size - digit_size, 0, image_size - digit_size))  # [N,1,S,S]
    shift = pos * (2.0 / image_size)  # pixels -> normalised units
    theta = torch.zeros(n, frames, 2, 3)
    theta[..., 0, 0] = theta[..., 1, 1] = 1.0
    theta[..., 0, 2], theta[..., 1, 2] = -shift[..., 0], -shift[..., 1]
    grid = F.affine_grid(theta.view(n * frames, 2, 3), [n * frames, 1, image_size, image_size], align_corners=False)
    src = canvas[:, None].expand(n, frames, 1, image_size, image_size).reshape(n * frames, 1, image_size, image_size)
    moved = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    clips = moved.view(n, frames, 1, image_size, image_size).permute(0, 2, 1, 3, 4).clamp(0, 1) * 2 - 1
    clips = clips.expand(n, 3, frames, image_size, image_size).contiguous()
    captions = [motion_caption(int(y), int(d), i) for i, (y, d) in enumerate(zip(labels.tolist(), directions.tolist()))]
    return clips, labels, directions, captions


class CaptionedDataset(Dataset):
    """In-memory rows: one tensor per key (sharing the first dim) plus the captions."""

    def __init__(self, captions: list[str], **tensors: Tensor) -> None:
        n = {len(captions), *(len(v) for v in tensors.values())}
        if len(n) != 1:
            raise ValueError(f"captions and tensors disagree in length: {sorted(n)}")
        self.captions, self.tensors = captions, tensors

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        return {"caption": self.captions[i], **{k: v[i] for k, v in self.tensors.items()}}


class MixedCaptionedDataset(Dataset):
    """Several :class:`CaptionedDataset` parts (images and clips) as one set: item i is item i of the part it
    falls in, in part order. Items of different parts have different shapes."""

    def __init__(self, parts: Sequence[CaptionedDataset]) -> None:
        self.parts = list(parts)
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = next(k for k in range(len(self.parts)) if i < self.offsets[k + 1])
        return self.parts[k][i - self.offsets[k]]

    @property
    def captions(self) -> list[str]:
        return [c for part in self.parts for c in part.captions]


class PairedDataset(Dataset):
    """Item i of a joint set: ``{"image": ..., "video": ...}`` from two datasets (the shorter one cycles)."""

    def __init__(self, images: Tensor, clips: Tensor) -> None:
        self.images, self.clips = images, clips

    def __len__(self) -> int:
        return max(len(self.images), len(self.clips))

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i % len(self.images)], "video": self.clips[i % len(self.clips)]}


class CaptionedDigitsDataModule(InMemoryLoaders):
    """Captioned digits (``kind="image"``), moving digits (``kind="video"``) for T2I / T2V, both at once
    (``kind="joint"``, image + clip pairs for joint image + video tokenizer training), or both as one captioned
    set (``kind="mixed"``: every image and every clip an example, for T2I/T2V training with sequence packing).

    Batches: ``{"image": [B, 3, S, S]}`` or ``{"video": [B, 3, T, S, S]}``, plus ``"label"`` (and ``"direction"``)
    and ``"caption"`` (a list of B strings); joint batches are ``{"image", "video"}`` only. ``prompt_prefix``
    starts image captions with ``<T2I>`` and clip captions with ``<T2V>`` (official update §A6).
    """

    def __init__(
        self,
        kind: str = "image",
        image_size: int = 32,
        frames: int = 9,
        digit_size: int = 16,
        clips_per_digit: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        prompt_prefix: bool = False,
    ) -> None:
        super().__init__()
        if kind not in ("image", "video", "joint", "mixed"):
            raise ValueError(f"kind must be 'image', 'video', 'joint' or 'mixed', got {kind!r}")
        self.prompt_prefix = bool(prompt_prefix)
        self.kind, self.image_size, self.frames = kind, image_size, frames
        self.digit_size, self.clips_per_digit = digit_size, clips_per_digit
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_set: CaptionedDataset | None = None
        self.val_set: CaptionedDataset | None = None

    def _build(self, split: str) -> Dataset:
        if self.kind == "joint":
            images = captioned_digits(split, self.image_size, self.seed)[0]
            clips = moving_digits(split, self.frames, self.image_size, self.digit_size, self.clips_per_digit,
                                  self.seed)[0]
            return PairedDataset(images, clips)
        if self.kind == "mixed":
            return MixedCaptionedDataset([self._captioned(split, "image"), self._captioned(split, "video")])
        return self._captioned(split, self.kind)

    def _captioned(self, split: str, kind: str) -> CaptionedDataset:
        if kind == "image":
            images, labels, captions = captioned_digits(split, self.image_size, self.seed)
            return CaptionedDataset(self._prefixed(captions, "t2i"), image=images, label=labels)
        clips, labels, directions, captions = moving_digits(
            split, self.frames, self.image_size, self.digit_size, self.clips_per_digit, self.seed
        )
        return CaptionedDataset(self._prefixed(captions, "t2v"), video=clips, label=labels, direction=directions)

    def _prefixed(self, captions: list[str], task: str) -> list[str]:
        # the I2V prefix (first-frame captions, i2v_ratio) belongs with first-frame training, not here
        return [with_prefix(c, task) for c in captions] if self.prompt_prefix else captions

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self._build("train"), self._build("val")



class EncodedCaptionedDataModule(CacheReaderMixin, InMemoryLoaders):
    """Token maps + captions for T2I / T2V training: a captioned pixel DataModule encoded once by a frozen tokenizer
    (the generator never touches pixels).

    Two paths, chosen by the source:

    * an in-memory source (``train_set`` / ``val_set`` items with ``image`` or ``video`` and ``caption``, e.g.
      :class:`CaptionedDigitsDataModule`) is encoded into memory at set-up; captions stay strings (the training
      module encodes each distinct caption once). Batches: ``{"tokens": int64 [B, d, (T,) h, w],
      "caption": list[str], "label", ("direction")}``;
    * a text shard source (:class:`~grn.datamodules.text.TextImageDataModule` / ``TextVideoDataModule``) is
      encoded once — tokens *and* caption features — into an on-disk text token cache
      (:mod:`grn.datamodules.text_tokens`, built in ``prepare_data``, reused by later runs) and read from it with
      the shard pipeline's buckets, exact resume and bad-sample counts. Batches carry ``text`` / ``text_lens`` /
      ``null_text`` features instead of needing the text encoder;
    * a :class:`~grn.datamodules.joint.JointSource` (``data=text_joint``): each part cached as above and read in
      step, batches ``{"image": {...}, "video": {...}}`` (joint image + video training).

    Args:
        source: the pixel DataModule (or its Hydra config).
        tokenizer_ckpt: the tokenizer checkpoint (EMA weights are used; official files work too).
        text_encoder: shard sources: the Hydra config of the caption encoder the cache is built with.
        cache_dir: shard sources: cache root (default ``$GRN_CACHE_DIR`` or ``.cache/grn``).
        text_dtype: shard sources: ``float16`` (half the disk) or ``float32`` features.
        encode_batch_size, device: how the cache is encoded (once).
        pack_budget: sequence packing (the released trainer's ``train_max_token_len``, official update §C9): each
            batch is one packed sequence of at most this many tokens (:mod:`grn.datamodules.seq_packing`), and
            ``batch_size`` is not used for training; None: batches of ``batch_size`` same-shape samples.
            In-memory sources pack the whole set each epoch (:class:`PackedSampler`; caption tokens counted with
            the ``text_encoder`` config's tokenizer); shard sources pack windows of ``pack_window`` samples
            (:class:`PackingBatcher`).
        pack_dense_ratio: examples longer than ``pack_budget · pack_dense_ratio`` tokens are left out (official
            ``dense_ratio4seqpack``; None: up to the budget).
        pack_window: shard sources: samples per packing window.
    """

    def __init__(self, source: L.LightningDataModule, tokenizer_ckpt: str, batch_size: int = 64,
                 num_workers: int | None = None, seed: int = 0, encode_batch_size: int = 128,
                 text_encoder: dict | None = None, cache_dir: str | None = None, text_dtype: str = "float16",
                 drop_last: bool = True, device: str = "cpu", pack_budget: int | None = None,
                 pack_dense_ratio: float | None = None, pack_window: int = 256) -> None:
        super().__init__()
        if pack_budget is not None and int(pack_budget) < 1:
            raise ValueError(f"pack_budget must be a positive token count or null, got {pack_budget}")
        self.pack_budget = int(pack_budget) if pack_budget is not None else None
        self.pack_dense_ratio = float(pack_dense_ratio) if pack_dense_ratio is not None else None
        self.pack_window = int(pack_window)
        self._pack_counts: dict[str, list[int]] = {}
        if not isinstance(source, L.LightningDataModule):  # a config (the stage instantiates non-recursively)
            source = instantiate(source)
        self.source, self.tokenizer_ckpt = source, tokenizer_ckpt
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.encode_batch_size = encode_batch_size
        self.text_encoder, self.text_dtype = text_encoder, text_dtype
        self.cache_dir = cache_dir or os.environ.get("GRN_CACHE_DIR", ".cache/grn")
        self.drop_last, self.device = drop_last, device
        self.train_set: CaptionedDataset | None = None
        self.val_set: CaptionedDataset | None = None

    @property
    def sharded(self) -> bool:
        return isinstance(self.source, (ShardDataModule, JointSource))

    @property
    def provides_text_features(self) -> bool:
        """True where batches carry caption features (the training module then never loads the text encoder)."""
        return self.sharded

    def _shard_sources(self) -> dict[str, ShardDataModule]:
        """The pixel shard sources by part name (one unnamed part unless the source is a JointSource)."""
        return dict(self.source.parts) if isinstance(self.source, JointSource) else {"": self.source}

    def _text_cache(self, source: ShardDataModule | None = None):
        from grn.datamodules.text_tokens import ensure_text_token_cache

        if self.text_encoder is None:
            raise ValueError("a text shard source needs the datamodule's text_encoder config (the caption "
                             "features are cached with it)")
        return ensure_text_token_cache(source or self.source, self.tokenizer_ckpt, self.text_encoder,
                                       self.cache_dir, batch_size=self.encode_batch_size, device=self.device,
                                       text_dtype=self.text_dtype)

    def prepare_data(self) -> None:
        if self.sharded:  # once per node, before setup
            for source in self._shard_sources().values():
                self._text_cache(source)

    @torch.no_grad()
    def _encode(self, tokenizer, data: CaptionedDataset | MixedCaptionedDataset):
        if isinstance(data, MixedCaptionedDataset):
            return MixedCaptionedDataset([self._encode(tokenizer, part) for part in data.parts])
        key = "video" if "video" in data.tensors else "image"
        pixels = data.tensors[key]
        tokens = torch.cat([tokenizer.encode(pixels[i : i + self.encode_batch_size], target="index")
                            for i in range(0, len(pixels), self.encode_batch_size)])
        rest = {k: v for k, v in data.tensors.items() if k != key}
        return CaptionedDataset(data.captions, tokens=tokens, **rest)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or self.tokens is not None:
            return
        if self.sharded:
            from grn.datamodules.text_tokens import TextTokenShardDataModule

            packing = ({"budget": self.pack_budget, "dense_ratio": self.pack_dense_ratio, "window": self.pack_window}
                       if self.pack_budget else None)
            readers = {
                name: TextTokenShardDataModule(
                    cache=str(self._text_cache(src)), short_caption_prob=getattr(src, "short_caption_prob", 0.2),
                    batch_size=src.batch_size if name else self.batch_size, seed=self.seed,
                    drop_last=self.drop_last, packing=packing, **pipeline_settings(src, self.num_workers),
                )
                for name, src in self._shard_sources().items()
            }
            self.attach_cache(readers[""] if "" in readers else JointShards(readers))
            return
        from grn.checkpoints import load_tokenizer

        tokenizer = load_tokenizer(self.tokenizer_ckpt)
        self.source.setup(stage)
        self.train_set = self._encode(tokenizer, self.source.train_set)
        self.val_set = self._encode(tokenizer, self.source.val_set)
        if self.pack_budget:
            self._pack_counts = {name: self._token_counts(data)
                                 for name, data in (("train", self.train_set), ("val", self.val_set))}

    # ---- sequence packing (in-memory sources) ------------------------------------------------------------------
    def _token_counts(self, data) -> list[int]:
        """Packing counts (visual + pt + caption tokens) of every item; captions tokenised once per distinct one."""
        from grn.models.text_encoder import caption_token_counts

        if self.text_encoder is None:
            raise ValueError("pack_budget needs the datamodule's text_encoder config (caption tokens count toward "
                             "the budget)")
        captions = list(data.captions)
        distinct = sorted(set(captions))
        lens = dict(zip(distinct, caption_token_counts(self.text_encoder, distinct), strict=True))
        parts = data.parts if isinstance(data, MixedCaptionedDataset) else [data]
        visual = [int(t[0].numel()) for part in parts for t in part.tensors["tokens"]]
        return [v + 1 + lens[c] for v, c in zip(visual, captions, strict=True)]

    def _packed_loader(self, split: str) -> DataLoader:
        data = self.train_set if split == "train" else self.val_set
        sampler = PackedSampler(self._pack_counts[split], self.pack_budget, self.pack_dense_ratio,
                                shuffle=split == "train", seed=self.seed)
        return DataLoader(PackedView(data), sampler=sampler, batch_size=None, num_workers=self.num_workers or 0)

    def _check_batchable(self, data) -> None:
        if isinstance(data, MixedCaptionedDataset) and not self.pack_budget:
            raise ValueError("a mixed image + video source (kind=mixed) batches only with sequence packing: set "
                             "the stage's datamodule.pack_budget")

    def _loader(self, split: str) -> DataLoader:
        if self.tokens is None and self.pack_budget:
            return self._packed_loader(split)
        if self.tokens is None:
            self._check_batchable(self.train_set if split == "train" else self.val_set)
        return super().train_dataloader() if split == "train" else super().val_dataloader()

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")
