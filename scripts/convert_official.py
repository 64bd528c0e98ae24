"""Convert an official GRN release file into a grn checkpoint (optional: sample.py / eval.py / GRNPipeline and the
stages' tokenizer_ckpt also take the official files directly).

    python scripts/convert_official.py GRN_ind_B_ep599.pth grn_ind_b.ckpt --tokenizer <tokenizer.ckpt>
    python scripts/convert_official.py GRN_T2I_2B.pth grn_t2i_2b.ckpt --target bits   # T2I/T2V (flat state dict)
    python scripts/convert_official.py HBQ_image_tokenizer_16dim_M4.ckpt tokenizer.ckpt

C2I: keeps all three weight sets, the live weights and both EMAs (``ema=ema1`` is the one the paper evaluates).
T2I/T2V: the flat 319-key GRN2b state dict, renamed to our block numbering (see grn.checkpoints.official_t2iv).
Tokenizer: its ``ema`` weights (else ``vae``). The family is read off the file unless ``--kind`` names it; the file
is read once (grn.checkpoints.official).
"""

from __future__ import annotations

import argparse

from grn.checkpoints import official_adapter, official_adapters, read_checkpoint, require_checkpoint_file
from grn.io import atomic_torch_save

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="official file: C2I .pth (model / model_ema1 / model_ema2), T2I/T2V state dict "
                                    "or HBQ tokenizer .ckpt")
    parser.add_argument("dst", help="output .ckpt")
    parser.add_argument("--tokenizer", default=None, help="tokenizer checkpoint recorded for decoding")
    parser.add_argument("--hbq-rounds", type=int, default=4)
    parser.add_argument("--target", choices=["index", "bits"], default=None,
                        help="label type (default: index for C2I, bits for T2I/T2V, as released)")
    parser.add_argument("--kind", choices=["auto", "c2i", "t2iv", "tokenizer"], default="auto",
                        help="official file family (auto: read off its keys)")
    args = parser.parse_args(argv)
    require_checkpoint_file(args.src, "official")
    if args.tokenizer:
        require_checkpoint_file(args.tokenizer, "tokenizer")
    ckpt = read_checkpoint(args.src, mmap=True)
    adapter = official_adapters()[args.kind] if args.kind != "auto" else official_adapter(ckpt)
    if adapter is None:
        raise ValueError(f"{args.src} is not an official GRN C2I, T2I/T2V or tokenizer file (or already a grn "
                         "checkpoint): pass --kind to say which it is")
    options = {"hbq_rounds": args.hbq_rounds}
    if adapter.family != "tokenizer":
        options.update(tokenizer_ckpt=args.tokenizer, target=args.target or ("bits" if adapter.family == "t2iv"
                                                                                else "index"))
    out = adapter.to_checkpoint(ckpt, args.src, **options)
    atomic_torch_save(out, args.dst)
    hp = out["hyper_parameters"]
    if adapter.family == "tokenizer":
        print(f"wrote {args.dst}: tokenizer (d={hp['tokenizer']['latent_dim']})")
    elif adapter.family == "t2iv":
        print(f"wrote {args.dst}: T2I/T2V {hp['net']['size']} ({hp['net']['target']}, d={hp['net']['latent_dim']})")
    else:
        print(f"wrote {args.dst}: {hp['net']['size']} ({hp['net']['target']}), epoch {out['epoch']}")


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
