"""Encode a dataset once with a trained tokenizer into token shards that the generator reads directly.

    python scripts/cache_tokens.py --tokenizer runs/tok/tokenizer/checkpoints/last.ckpt \\
        --shards 'shards/imagenet-train/shard-{000000..001281}.tar' --val-shards 'shards/imagenet-val/*.tar' \\
        --image-size 256 --num-classes 1000 --num-workers 8 --device cuda
    python scripts/cache_tokens.py --tokenizer <ckpt> --builtin digits     # the built-in digits shards
    python scripts/cache_tokens.py --tokenizer <ckpt> --shards '...' --video --num-frames 17 --fps 16 --size 256 256

The cache folder is ``<cache-root>/tokens/<tokenizer sha256[:16]>-<transform sha256[:8]>/`` (the transform
includes the source pattern), so a new tokenizer checkpoint or transform never reuses stale tokens; a finished
cache (its ``meta.json`` exists) is reused as is. Tokens of the horizontally flipped input are stored too
(``--no-flip`` to skip), so training keeps its random flip without re-running the tokenizer. Train with
``stages.c2i.datamodule.cache=<printed folder>`` with ``data=tokens`` (see docs/data.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="tokenizer training checkpoint (.ckpt)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="class-labelled image (or, with --video, video) shard pattern")
    src.add_argument("--builtin", choices=["digits", "photos", "gif"], help="a built-in shard set")
    parser.add_argument("--val-shards", default=None)
    parser.add_argument("--image-size", type=int, default=None, help="ADM centre crop (default 256; built-in: stored)")
    parser.add_argument("--num-classes", type=int, default=None, help="default 1000 (images), none (videos)")
    parser.add_argument("--video", action="store_true", help="the shards hold mp4 clips")
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    parser.add_argument("--no-flip", action="store_true", help="do not also cache the flipped tokens")
    parser.add_argument("--cache-root", default=os.environ.get("GRN_CACHE_DIR", ".cache/grn"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--max-count", type=int, default=1000, help="samples per token shard")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    from grn.checkpoints import require_checkpoint_file

    require_checkpoint_file(args.tokenizer, "tokenizer")  # before any data is read
    from grn.datamodules.builtin import builtin_image_shards, builtin_video_shards
    from grn.datamodules.images import ImageShardDataModule
    from grn.datamodules.token_shards import ensure_token_cache, read_meta
    from grn.datamodules.video import VideoShardDataModule

    common = dict(batch_size=args.batch_size, num_workers=args.num_workers, resampled=False)
    video_args = dict(num_frames=args.num_frames, fps=args.fps, size=tuple(args.size))
    if args.builtin == "gif":
        source = builtin_video_shards(cache_dir=args.cache_root, **video_args, **common)
    elif args.builtin:
        extra = {"image_size": args.image_size} if args.image_size else {}
        source = builtin_image_shards(args.builtin, cache_dir=args.cache_root, **extra, **common)
    elif args.video:
        source = VideoShardDataModule(train_shards=args.shards, val_shards=args.val_shards, **video_args,
                                      labelled=args.num_classes is not None, num_classes=args.num_classes, **common)
    else:
        source = ImageShardDataModule(train_shards=args.shards, val_shards=args.val_shards,
                                      image_size=args.image_size or 256, num_classes=args.num_classes or 1000,
                                      **common)
    start = time.perf_counter()
    done_before = False
    try:
        from grn.datamodules.token_shards import cache_dir_for

        done_before = (cache_dir_for(args.cache_root, args.tokenizer,
                                     {**source.transform_spec(), "flip": not args.no_flip}) / "meta.json").is_file()
    except FileNotFoundError:
        pass  # no checkpoint: ensure_token_cache raises the clear error below
    cache = ensure_token_cache(source, args.tokenizer, args.cache_root, flip=not args.no_flip,
                               batch_size=args.batch_size, device=args.device, max_count=args.max_count)
    result = {"cache": str(cache), "cached": done_before, "seconds": round(time.perf_counter() - start, 2),
              "splits": read_meta(cache)["splits"]}
    json.dump(result, sys.stdout, indent=1)
    print()
    return result


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
