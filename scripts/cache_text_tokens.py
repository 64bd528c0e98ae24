"""Encode text–image or text–video shards once — tokens by the frozen tokenizer, captions by the frozen text
encoder — into a text token cache that T2I/T2V training reads without either encoder.

    python scripts/cache_text_tokens.py --tokenizer weights/HBQ_joint_tokenizer.ckpt \\
        --shards 'shards/t2i/shard-{000000..000999}.tar' --pn 0.06M --text-encoder umt5_xxl --device cuda
    python scripts/cache_text_tokens.py --tokenizer <ckpt> --shards '...' --video --num-frames 33 --fps 16 \\
        --pn 0.41M --text-encoder umt5_xxl --device cuda
    python scripts/cache_text_tokens.py --tokenizer <ckpt> --shards '...' --text-encoder tiny   # offline stand-in

The folder is ``<cache-root>/text_tokens/<tokenizer sha256[:16]>-<settings sha256[:8]>/`` (the settings are the
source pattern and transform, the text encoder config and the feature dtype), so a run with the same settings finds
it: `python train.py task=t2i data=text_image data.train_shards=...` uses it instead of encoding again. Every
caption the official rules can pick is cached (long and short; tarsier2 and MiniCPM), so the choice stays random.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="tokenizer checkpoint (ours or an official file)")
    parser.add_argument("--shards", required=True, help="text–image (or, with --video, text–video) shard pattern")
    parser.add_argument("--val-shards", default=None)
    parser.add_argument("--video", action="store_true", help="the shards hold mp4 clips (text_video)")
    parser.add_argument("--pn", default="0.06M", help="size preset (0.06M, 0.25M, 0.41M, 1M, ...) or a side in tokens")
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--num-frames", type=int, default=33)
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--durations", choices=["fixed", "per_clip"], default="fixed",
                        help="per_clip: each clip at its own duration, --num-frames at most (data.durations)")
    parser.add_argument("--min-duration", type=float, default=1.0, help="per_clip: shorter videos are skipped")
    parser.add_argument("--text-encoder", default="umt5_xxl",
                        help="a conf/model/text_encoder config name (umt5_xxl reads $GRN_WEIGHTS_DIR)")
    parser.add_argument("--text-dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--cache-root", default=os.environ.get("GRN_CACHE_DIR", ".cache/grn"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from hydra.errors import InstantiationException
    from omegaconf import OmegaConf

    from grn.datamodules.text import TextImageDataModule, TextVideoDataModule
    from grn.datamodules.text_tokens import ensure_text_token_cache
    from grn.datamodules.token_shards import read_meta
    from grn.entrypoints.common import CONF_DIR

    enc_path = Path(CONF_DIR) / "model" / "text_encoder" / f"{args.text_encoder}.yaml"
    if not enc_path.is_file():
        raise SystemExit(f"no text encoder config {enc_path}")
    encoder = OmegaConf.to_container(OmegaConf.load(enc_path), resolve=True)
    pn = args.pn if not args.pn.isdigit() else int(args.pn)
    common = dict(train_shards=args.shards, val_shards=args.val_shards, pn=pn, stride=args.stride,
                  batch_size=args.batch_size, num_workers=args.num_workers, resampled=False)
    source = (TextVideoDataModule(num_frames=args.num_frames, fps=args.fps, durations=args.durations,
                                  min_duration=args.min_duration, **common) if args.video
              else TextImageDataModule(**common))
    start = time.perf_counter()
    try:
        cache = ensure_text_token_cache(source, args.tokenizer, encoder, args.cache_root,
                                        batch_size=args.batch_size, device=args.device, text_dtype=args.text_dtype)
    except (FileNotFoundError, ValueError, InstantiationException) as err:  # missing files: one line, no trace
        raise SystemExit(f"error: {err.__cause__ or err}") from None
    meta = read_meta(cache)
    result = {"cache": str(cache), "seconds": round(time.perf_counter() - start, 2), "splits": meta["splits"]}
    json.dump(result, sys.stdout, indent=1)
    print()
    return result


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
