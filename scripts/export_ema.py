"""Export the EMA weights of a training checkpoint (a .ckpt file or a sharded FSDP folder) into one small file for
evaluation and sampling: no optimiser, no discriminator, no loop state.

    python scripts/export_ema.py runs/my-run/c2i/checkpoints/step0010000.ckpt grn_c2i_ema.ckpt
    python scripts/export_ema.py runs/my-run/c2i/checkpoints/last.ckpt grn_c2i_ema2.ckpt --ema ema2
    python scripts/export_ema.py runs/my-run/tokenizer/checkpoints/last.ckpt tokenizer_ema.ckpt

The result loads wherever a training checkpoint does (sample.py ckpt=..., eval.py, GRNPipeline, stage configs'
tokenizer_ckpt). A sharded folder is read on one CPU process, without a process group.
"""

from __future__ import annotations

import argparse

from grn.checkpoints import export_ema


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="training checkpoint: .ckpt file or sharded .ckpt folder")
    parser.add_argument("dst", help="output .ckpt")
    parser.add_argument(
        "--ema", default="ema1", help="which EMA of a generator (ema1, ema2, ...); 'none': the live weights"
    )
    args = parser.parse_args(argv)
    ema = None if args.ema.lower() == "none" else args.ema
    out = export_ema(args.src, args.dst, ema=ema)
    print(f"wrote {out}")


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
