"""Image-to-video on moving digits: each T2V checkpoint sampled in both I2V forms, same clips, same seed.

    python scripts/t2iv_i2v_compare.py region=runs/i2v_region/t2v/checkpoints/last.ckpt \
        first_frame=runs/i2v_first_frame/t2v/checkpoints/last.ckpt --clips 360 --out runs/i2v_compare.json

Every ``NAME=CKPT`` is a T2I/T2V checkpoint (its tokenizer and caption encoder are the ones it records). For each,
and for each form of :mod:`grn.sampling.text` — ``first_frame`` (official update §B: the clean first-frame tokens
appended at time position 600, the pt value over the generated tokens) and ``region`` (the first latent frame held
as known tokens of the map) — the first frames of ``--clips`` real held-out clips are continued with the caption of
their own digit and direction (:func:`grn.metrics.t2iv_digits.evaluate_i2v`); the direction read from the
generated clip's ink motion is compared with the caption's (chance 0.25). Writes a JSON with every number and
setting, and prints a markdown table (one row per checkpoint, one column per form).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from grn.checkpoints import load_t2iv, load_tokenizer
from grn.io import atomic_write_json
from grn.metrics.t2iv_digits import TextModel, caption_encoder, evaluate_i2v
from grn.models.packing import I2V_MODES
from grn.sampling.text import sample_t2iv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="NAME=CKPT")
    p.add_argument("--clips", type=int, default=360, help="real held-out clips (at most 360)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--pt-value", default="nominal", choices=("nominal", "realised"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=5, help="clip length (1 + 4k), as the data config")
    p.add_argument("--digit-size", type=int, default=24)
    p.add_argument("--out", type=Path, default=None, help="JSON to write (default: none)")
    args = p.parse_args(argv)
    if not 1 <= args.clips <= 360:
        p.error(f"--clips must be in [1, 360], got {args.clips}")
    pairs = []
    for item in args.checkpoints:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            p.error(f"give checkpoints as NAME=CKPT, got {item!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path} (given as {name}=)")
        pairs.append((name, Path(path)))
    args.checkpoints = pairs
    return args


def table(results: dict) -> str:
    """Markdown: one row per checkpoint (its training i2v_ratio), the direction accuracy of each form."""
    lines = ["| checkpoint | trained i2v_ratio | " + " | ".join(f"I2V `{m}`" for m in I2V_MODES) + " |",
             "|---|---|" + "---|" * len(I2V_MODES)]
    for name, r in results.items():
        cells = [f"{r['modes'][m]['direction_accuracy']:.3f}" for m in I2V_MODES]
        lines.append(f"| {name} | {r['i2v_ratio']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@torch.no_grad()  # not a global switch: tests call main() in their own process
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.time()
    base = dict(num_steps=args.steps, schedule="cosine", cfg_scale=args.cfg, temperature=args.temperature,
                pt_value=args.pt_value)
    results: dict = {}
    for name, path in args.checkpoints:
        net, hp = load_t2iv(path)
        tok_path = hp.get("tokenizer_ckpt")
        if not tok_path:
            raise ValueError(f"{path} records no tokenizer checkpoint")
        model = TextModel(net, caption_encoder(hp, path), load_tokenizer(tok_path), sample_t2iv)
        modes = {}
        for mode in I2V_MODES:
            metrics, _ = evaluate_i2v(model, args.clips, args.seed, {**base, "i2v_mode": mode}, args.frames,
                                      args.digit_size)
            modes[mode] = metrics
        results[name] = {"ckpt": str(path), "i2v_ratio": hp.get("i2v_ratio", 0.0),
                         "network_i2v_mode": net.i2v_mode, "modes": modes}
    out = {"settings": {**base, "clips": args.clips, "seed": args.seed, "frames": args.frames}, "results": results,
           "seconds": round(time.time() - started, 1)}
    if args.out is not None:
        atomic_write_json(out, args.out)
    print(table(results))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
