"""Data-pipeline throughput: samples/s of our shard pipeline vs a bare webdataset loop over the same shards.

    python bench/data.py                       # 256² JPEG class shards and 17-frame video shards, 0/1/2 workers
    python bench/data.py --images 512 --videos 32 --workers 0 2 4 --repeats 3

Shards are made from real skimage photos (random 320×384 crops, JPEG q90) and pans over them (mp4, 24 fps),
in a temporary folder. Both loops use the same per-sample work (ADM crop + flip + to-tensor; PyAV clip decode
with seeking + resize), so the ratio is the pipeline's own overhead (tar reading, shuffle buffer, bad-sample
handling, resume metadata, batching). Target: ≤ 10 %.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from grn.datamodules.builtin import _skimage_photos
from grn.datamodules.images import ClassImageDecoder, ImageShardDataModule
from grn.datamodules.video import VideoDecoder, VideoShardDataModule, encode_mp4
from grn.datamodules.wds import collate
from grn.datamodules.writers import write_shards


def make_image_shards(out: Path, n: int) -> str:
    photos = _skimage_photos()
    rng = np.random.default_rng(0)

    def samples():
        for i in range(n):
            label, (_, img) = i % len(photos), photos[i % len(photos)]
            h, w = min(img.shape[0], 320), min(img.shape[1], 384)
            top, left = rng.integers(0, img.shape[0] - h + 1), rng.integers(0, img.shape[1] - w + 1)
            crop = Image.fromarray(img[top : top + h, left : left + w]).resize((384, 320), Image.BICUBIC)
            buf = io.BytesIO()
            crop.save(buf, format="JPEG", quality=90)
            yield {"__key__": f"img{i:06d}", "jpg": buf.getvalue(), "cls": label}

    shards = write_shards(samples(), out, max_count=max(1, n // 8))
    return f"{out}/shard-{{000000..{len(shards) - 1:06d}}}.tar"


def make_video_shards(out: Path, n: int, frames: int = 48, size: int = 192) -> str:
    photos = _skimage_photos()
    rng = np.random.default_rng(1)

    def samples():
        for i in range(n):
            img = photos[i % len(photos)][1]
            y0, x0 = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size - frames)
            clip = np.stack([img[y0 : y0 + size, x0 + t : x0 + t + size] for t in range(frames)])  # a pan
            yield {"__key__": f"vid{i:06d}", "mp4": encode_mp4(clip, 24, gop=12), "cls": i % len(photos)}

    shards = write_shards(samples(), out, max_count=max(1, n // 4))
    return f"{out}/shard-{{000000..{len(shards) - 1:06d}}}.tar"


class _BareDecode:
    """The same per-sample work as our decoders, for the bare webdataset loop (rng per sample, like ours)."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder

    def __call__(self, sample):
        return self.decoder(sample, random.Random(hash(sample["__key__"])))


def bare_loader(pattern: str, decoder, batch_size: int, workers: int, shuffle: int):
    """A plain webdataset pipeline: shards → tar → shuffle → decode → batch, nothing else."""
    pipe = wds.DataPipeline(
        wds.SimpleShardList(pattern),
        wds.split_by_worker,
        wds.tarfile_to_samples(),
        wds.shuffle(shuffle, initial=min(shuffle, 100)),
        wds.map(_BareDecode(decoder)),
        wds.batched(batch_size, collation_fn=collate, partial=False),
    )
    return wds.WebLoader(pipe, batch_size=None, num_workers=workers)


def timed(loader, record=None) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for batch in loader:
        if record is not None:
            batch = record(batch)
        n += len(batch["key"])
    return n, time.perf_counter() - start


def run(kind: str, pattern: str, make_dm, decoder, batch_size: int, args) -> list[dict]:
    rows = []
    timed(make_dm(0).train_dataloader())  # warm-up: imports, codec set-up, page cache
    for workers in args.workers:
        best_ours = best_bare = float("inf")
        n_ours = n_bare = 0
        for r in range(args.repeats):
            # alternate the order so that neither loop profits from running second
            for which in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
                if which == "ours":
                    dm = make_dm(workers)
                    n_ours, t = timed(dm.train_dataloader(), dm.record)
                    best_ours = min(best_ours, t)
                else:
                    n_bare, t = timed(bare_loader(pattern, decoder, batch_size, workers, args.shuffle))
                    best_bare = min(best_bare, t)
        ours, bare = n_ours / best_ours, n_bare / best_bare
        rows.append({"kind": kind, "workers": workers, "ours": ours, "bare": bare, "overhead": bare / ours - 1})
        print(f"{kind:6s} workers={workers}: ours {ours:7.1f} samples/s ({n_ours} samples)   bare webdataset "
              f"{bare:7.1f} samples/s ({n_bare})   overhead {100 * (bare / ours - 1):+5.1f} %", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="JPEG samples")
    parser.add_argument("--videos", type=int, default=16, help="mp4 samples (48 frames, 192², 24 fps)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shuffle", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="best of N passes")
    parser.add_argument("--out", default=None, help="folder for the shards (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        images = make_image_shards(root / "images", args.images)
        videos = make_video_shards(root / "videos", args.videos)
        common = dict(resampled=False, shuffle_buffer=args.shuffle, shuffle_initial=min(args.shuffle, 100), seed=0)
        video_batch = max(1, min(args.batch_size, args.videos // (2 * max(1, *args.workers))))
        n_img = len(wds.shardlists.expand_urls(images))
        n_vid = len(wds.shardlists.expand_urls(videos))
        print(f"# {args.images} JPEG 384x320 -> 256² (ADM crop + flip) in {n_img} shards; {args.videos} mp4 "
              f"192² 48 frames -> 17 frames @ 12 fps, 128² in {n_vid} shards; batch {args.batch_size} / {video_batch}; "
              f"torch threads 1; {os.cpu_count()} CPUs", flush=True)
        rows = run("image", images,
                   lambda w: ImageShardDataModule(train_shards=images, image_size=256, num_classes=1000,
                                                  num_workers=w, batch_size=args.batch_size, **common),
                   ClassImageDecoder(256, True, 1000), args.batch_size, args)
        rows += run("video", videos,
                    lambda w: VideoShardDataModule(train_shards=videos, num_frames=17, fps=12, size=(128, 128),
                                                   labelled=True, num_workers=w, batch_size=video_batch, **common),
                    VideoDecoder(17, 12, (128, 128), False, True), video_batch, args)
    worst = max(r["overhead"] for r in rows)
    print(f"# worst pipeline overhead vs bare webdataset: {100 * worst:+.1f} % (target <= 10 %)")
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
