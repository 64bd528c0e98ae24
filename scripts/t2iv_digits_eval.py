"""What the tiny T2I / T2V models of ``experiment=t2iv_digits`` learned, measured on generated pixels.

    python train.py experiment=t2iv_digits                   # tokenizer, then T2I, then T2V (CPU)
    python scripts/t2iv_digits_eval.py runs/t2iv_digits      # metrics JSON + sample grids in that run directory

The run-directory form of ``python eval.py task=t2i|t2v`` (one checkpoint each; see docs/t2iv_training.md): both
stages of the run, the tokenizer of ``<run_dir>/tokenizer``, one ``<run_dir>/t2iv_metrics.json`` and the grids
``t2i_samples.png``, ``t2v_samples.png``, ``i2v_samples.png`` beside it. The measurements
(:mod:`grn.metrics.t2iv_digits`):

* T2I: for each digit, ``--per-caption`` images from "a handwritten <digit>"; the digits classifier (trained on the
  real digits, independent of the generator) reads them: caption-conditional accuracy (chance 0.1).
* T2V: for each digit and direction, clips from "a handwritten <digit> moving <direction>"; the direction is read
  from the ink centroid's motion between the first and the last frame (chance 0.25), the digit by the classifier
  on a 16×16 window around the centroid of the middle frame, scaled to 32×32 (chance 0.1).
* I2V: the same clips generated from the first frame of real held-out clips (the first latent frame held fixed):
  direction accuracy from the caption, and the share of first frames returned bit-identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from grn.checkpoints import load_tokenizer
from grn.io import atomic_write_json
from grn.metrics.digits import load_or_train_classifier
from grn.metrics.t2iv_digits import TextModel, describe, evaluate_t2i, evaluate_t2v, load_with_encoder, save_grid
from grn.sampling.text import sample_t2iv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--per-caption", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=5, help="clip length (1 + 4k), as the data config")
    p.add_argument("--digit-size", type=int, default=24, help="digit side in the clips, as the data config")
    p.add_argument("--i2v-clips", type=int, default=40, help="real held-out clips whose first frame starts I2V")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/grn"))
    p.add_argument("--pt-value", choices=["nominal", "realised"], default=None,
                   help="the sampler's pt value (default: as the model was trained, its pt_value)")
    p.add_argument("--joint", action="store_true",
                   help="one model for both (experiment=t2iv_official_digits): T2I is measured on the t2v stage")
    args = p.parse_args()
    if not args.run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {args.run_dir} (of train.py experiment=t2iv_digits)")
    started = time.time()
    sampler = dict(num_steps=args.steps, schedule="cosine", cfg_scale=args.cfg, temperature=args.temperature)
    tok = load_tokenizer(args.run_dir / "tokenizer" / "checkpoints" / "last.ckpt")
    clf, clf_acc = load_or_train_classifier(args.cache_dir / "digits_classifier.pt")  # trains once if missing
    torch.set_grad_enabled(False)
    out: dict = {"settings": {**sampler, "per_caption": args.per_caption, "seed": args.seed},
                 "classifier_val_accuracy": clf_acc}
    for task in ("t2i", "t2v"):
        stage = "t2v" if args.joint else task
        ckpt = args.run_dir / stage / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            continue
        net, encode, hp = load_with_encoder(ckpt, with_hparams=True)
        model = TextModel.from_hparams(net, encode, tok, sample_t2iv, hp)
        opts = {**sampler, "pt_value": args.pt_value or hp.get("pt_value", "nominal")}
        out["settings"][f"{task}_pt_value"] = opts["pt_value"]
        if task == "t2i":
            metrics, grids = evaluate_t2i(model, clf, args.per_caption, args.seed, opts)
        else:
            metrics, grids = evaluate_t2v(model, clf, args.per_caption, args.seed, opts, frames=args.frames,
                                          digit_size=args.digit_size, i2v_clips=args.i2v_clips)
        out.update(metrics)
        for name, grid in grids.items():
            save_grid(grid, args.run_dir / f"{name}_samples.png")
        print("\n".join(describe(metrics)))
    if len(out) == 2:
        sys.exit(f"no t2i/t2v checkpoints under {args.run_dir} (train with experiment=t2iv_digits first)")
    out["seconds"] = round(time.time() - started, 1)
    atomic_write_json(out, args.run_dir / "t2iv_metrics.json")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
