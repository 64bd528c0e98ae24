"""Convert an official GRN C2I checkpoint into one that sample.py / eval.py / GRNPipeline read.

    python scripts/convert_official.py GRN_ind_B_ep599.pth grn_ind_b.ckpt --tokenizer <tokenizer.ckpt>

Keeps all three weight sets: the live weights and both EMAs (``ema=ema1`` is the one the paper evaluates).
"""

from __future__ import annotations

import argparse

from grn.io import atomic_torch_save
from grn.models.convert import c2i_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="official checkpoint (.pth with model / model_ema1 / model_ema2)")
    parser.add_argument("dst", help="output .ckpt")
    parser.add_argument("--tokenizer", default=None, help="tokenizer checkpoint recorded for decoding")
    parser.add_argument("--hbq-rounds", type=int, default=4)
    parser.add_argument("--target", choices=["index", "bits"], default="index")
    args = parser.parse_args(argv)
    ckpt = c2i_checkpoint(args.src, args.tokenizer, args.hbq_rounds, args.target)
    atomic_torch_save(ckpt, args.dst)
    print(f"wrote {args.dst}: {ckpt['hyper_parameters']['net']['size']} ({args.target}), epoch {ckpt['epoch']}")


if __name__ == "__main__":
    main()
