"""Write WebDataset shards from an image folder, the official jsonl lines, or a built-in set.

    python scripts/make_shards.py folder  data/imagenet/train  shards/imagenet-train --max-count 1000
    python scripts/make_shards.py jsonl   meta/*.jsonl         shards/t2v --media-root /data/videos
    python scripts/make_shards.py jsonl   GRN/data/toy_data/jsonls/*/*.jsonl shards/toy-video --media-root GRN --kind video
    python scripts/make_shards.py builtin digits                          # into $GRN_CACHE_DIR/shards/

``folder``: one sub-folder per class (torchvision ImageFolder order), the original image bytes, ``cls`` and a
``json`` with the relative path; files are shuffled under ``--seed`` so every shard mixes classes. ``jsonl``:
each ``image_path`` / ``video_path`` line becomes a sample with the media bytes and the line as ``json`` (frame
ranges and captions kept for the reader). Sources are opened read-only and are never modified or deleted.
Shards are written under temporary names and renamed when complete; ``<prefix>-index.json`` comes last.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grn.datamodules.builtin import BUILTIN_SHARD_SETS, builtin_shards
from grn.datamodules.writers import iter_image_folder, iter_jsonl_media, write_shards


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)
    folder = sub.add_parser("folder", help="ImageNet-style folder: root/<class>/<image>")
    folder.add_argument("root")
    folder.add_argument("out")
    folder.add_argument("--no-shuffle", action="store_true", help="keep class-sorted order (not for training)")
    jsonl = sub.add_parser("jsonl", help="official T2I/T2V jsonl lines (image_path or video_path)")
    jsonl.add_argument("jsonl", nargs="+")
    jsonl.add_argument("out")
    jsonl.add_argument("--media-root", default=None, help="base of relative media paths (default: the jsonl's dir; "
                       "the official toy data: the folder holding data/toy_data)")
    jsonl.add_argument("--kind", choices=("image", "video"), default=None,
                       help="keep only image or video lines (the official toy files mix both; write one set each)")
    builtin = sub.add_parser("builtin", help="a built-in real set into the data cache")
    builtin.add_argument("name", choices=BUILTIN_SHARD_SETS)
    builtin.add_argument("--cache-dir", default=None, help="default: $GRN_CACHE_DIR or .cache/grn")
    for p in (folder, jsonl):
        p.add_argument("--prefix", default="shard")
        p.add_argument("--max-count", type=int, default=1000, help="samples per shard")
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.source == "folder" and not Path(args.root).is_dir():
        raise FileNotFoundError(f"image folder not found: {args.root} (one sub-folder per class)")

    if args.source == "builtin":
        result = builtin_shards(args.name, args.cache_dir)
    elif args.source == "folder":
        classes, samples = iter_image_folder(args.root, shuffle=not args.no_shuffle, seed=args.seed)
        shards = write_shards(samples, args.out, prefix=args.prefix, max_count=args.max_count,
                              info={"classes": classes, "source": str(args.root)})
        result = {"shards": [str(s) for s in shards], "num_classes": len(classes)}
    else:
        stats: dict[str, int] = {}
        lines = iter_jsonl_media(args.jsonl, media_root=args.media_root, stats=stats, kind=args.kind)
        shards = write_shards(lines, args.out,
                              prefix=args.prefix, max_count=args.max_count, info={"skipped": stats})
        result = {"shards": [str(s) for s in shards], "skipped": stats}
    json.dump(result, sys.stdout, indent=1)
    print()
    return result


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
