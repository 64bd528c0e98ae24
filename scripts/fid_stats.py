"""Reference statistics for FID (``mu``, ``sigma`` in an ``.npz``, the ADM / JiT layout) from real images.

    # ImageNet-256 class-image shards (<key>.jpg + <key>.cls), Inception from a local file:
    python scripts/fid_stats.py --shards 'data/imagenet/train-{000000..001023}.tar' --image-size 256 \\
        --weights /models/weights-inception-2015-12-05-6726825d.pth --out fid_stats/imagenet256_train.npz
    # an image folder (recursive), the offline digits stand-in extractor:
    python scripts/fid_stats.py --folder real_digits/ --extractor grn-digits \\
        --weights .cache/grn/digits_classifier.pt --out fid_stats/digits.npz

Images are read once, in order, through WebDataset (shards) or PIL (folder), optionally resized (short side,
bicubic) and centre-cropped to ``--image-size``, turned into uint8 and streamed through the torch-fidelity
extractor; unreadable samples are skipped and counted. The file also records the extractor, the sha256 of its
weights, the number of images and the source; its own sha256 is printed (eval.py records it beside every FID).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", nargs="+", help="WebDataset shard URLs / brace patterns")
    src.add_argument("--folder", help="a folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--extractor", default="inception-v3-compat", help="torch-fidelity feature extractor name")
    p.add_argument("--weights", default=None, help="the extractor's weights file (nothing is downloaded)")
    p.add_argument(
        "--image-size", type=int, default=None, help="resize + centre-crop to this side (default: as is)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.folder and not Path(args.folder).is_dir():
        print(f"fid_stats: image folder not found: {args.folder}", file=sys.stderr)
        return 2

    from grn.metrics.fid import FidIsAccumulator, build_feature_extractor, file_sha256, save_reference_stats
    from grn.metrics.reference import iter_folder_images, iter_shard_images, stats_from_batches

    try:
        # built first: a missing weights file fails here, in one line, before any image is read
        extractor = build_feature_extractor(args.extractor, args.weights, args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"fid_stats: {err}", file=sys.stderr)
        return 2
    skipped: list[str] = []
    if args.shards:
        urls = args.shards if len(args.shards) > 1 else args.shards[0]
        images, source = iter_shard_images(urls, args.image_size, skipped), " ".join(args.shards)
    else:
        images, source = (
            iter_folder_images(args.folder, args.image_size, skipped),
            str(Path(args.folder).resolve()),
        )
    acc = FidIsAccumulator(extractor, isc_splits=1, batch_size=args.batch_size)
    try:
        n = stats_from_batches(acc, images, args.batch_size, args.max_images)
    except RuntimeError as err:  # torch.stack of images of different sizes
        print(f"fid_stats: images differ in size ({err}); pass --image-size", file=sys.stderr)
        return 2
    if n < 2:
        print(f"fid_stats: only {n} readable image(s) in {source} (skipped {len(skipped)})", file=sys.stderr)
        return 2
    mu, sigma = acc.fid.mu_sigma()
    weights = file_sha256(args.weights) if args.weights and Path(args.weights).is_file() else "none"
    digest = save_reference_stats(
        args.out,
        mu,
        sigma,
        extractor=args.extractor,
        weights_sha256=weights,
        num_images=n,
        source=source,
        image_size=args.image_size if args.image_size else "native",
        skipped=len(skipped),
    )
    for line in skipped[:5]:
        print(f"fid_stats: skipped {line}", file=sys.stderr)
    print(f"{args.out}: {n} images, {len(skipped)} skipped, dim {mu.shape[0]}, sha256 {digest}")
    return 0


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    sys.exit(cli_errors(main)())
