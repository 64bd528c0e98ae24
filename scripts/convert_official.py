"""Convert an official GRN C2I checkpoint into one that sample.py / eval.py / GRNPipeline read.

    python scripts/convert_official.py GRN_ind_B_ep599.pth grn_ind_b.ckpt --tokenizer <tokenizer.ckpt>
    python scripts/convert_official.py GRN_T2I_2B.pth grn_t2i_2b.ckpt --target bits   # T2I/T2V (flat state dict)

C2I: keeps all three weight sets, the live weights and both EMAs (``ema=ema1`` is the one the paper evaluates).
T2I/T2V (``--kind t2iv``, or detected from the file): the flat 319-key GRN2b state dict, renamed to our block
numbering (see grn.models.t2iv_checkpoint).
"""

from __future__ import annotations

import argparse

from grn.io import atomic_torch_save, require_checkpoint_file
from grn.models.convert import c2i_checkpoint


def detect_kind(path: str) -> str:
    """``t2iv`` for a flat T2I/T2V state dict (``word_embed.weight`` at the top level), else ``c2i``."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return "t2iv" if "word_embed.weight" in ckpt else "c2i"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="official checkpoint: C2I .pth (model / model_ema1 / model_ema2) or T2I/T2V state dict")
    parser.add_argument("dst", help="output .ckpt")
    parser.add_argument("--tokenizer", default=None, help="tokenizer checkpoint recorded for decoding")
    parser.add_argument("--hbq-rounds", type=int, default=4)
    parser.add_argument("--target", choices=["index", "bits"], default=None,
                        help="label type (default: index for C2I, bits for T2I/T2V, as released)")
    parser.add_argument("--kind", choices=["auto", "c2i", "t2iv"], default="auto",
                        help="official checkpoint kind (auto: a flat state dict with word_embed is T2I/T2V)")
    args = parser.parse_args(argv)
    require_checkpoint_file(args.src, "official")
    if args.tokenizer:
        require_checkpoint_file(args.tokenizer, "tokenizer")
    kind = args.kind if args.kind != "auto" else detect_kind(args.src)
    if kind == "t2iv":
        from grn.models.t2iv_checkpoint import t2iv_checkpoint

        ckpt = t2iv_checkpoint(args.src, args.tokenizer, args.hbq_rounds, args.target or "bits")
        atomic_torch_save(ckpt, args.dst)
        net = ckpt["hyper_parameters"]["net"]
        print(f"wrote {args.dst}: T2I/T2V {net['size']} ({net['target']}, d={net['latent_dim']})")
        return
    args.target = args.target or "index"
    ckpt = c2i_checkpoint(args.src, args.tokenizer, args.hbq_rounds, args.target)
    atomic_torch_save(ckpt, args.dst)
    print(f"wrote {args.dst}: {ckpt['hyper_parameters']['net']['size']} ({args.target}), epoch {ckpt['epoch']}")


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
