"""The released tokenizer recipe vs our defaults, measured: the same tiny joint tokenizer, data, loss weights,
learning rate, steps and seed, trained once with each and scored on held-out photos and GIF clips.

    OMP_NUM_THREADS=2 nice python scripts/tokenizer_recipe_compare.py                  # both arms, then the table
    python scripts/tokenizer_recipe_compare.py --arms released --steps 300 --seeds 0   # one arm (results are kept)
    python scripts/tokenizer_recipe_compare.py --report-only                           # the table from the results

Both arms compose ``experiment=tokenizer_tiny_joint`` (real skimage photo crops + GIF clips) with the same loss
weights (L1 1.0, LPIPS 0.2 with the random-AlexNet stand-in, PatchGAN 0.3), the GAN on from step 0, lr 1e-3 and
the tiny 32-channel 2-layer discriminator. They differ in exactly what the released recipe
(``conf/recipe/tokenizer_official.yaml``) changes:

* ``ours``: the adaptive GAN weight, the GroupNorm discriminator, AdamW (0.5, 0.9) without weight decay, the
  tiny experiment's EMA (0.99 with warm-up) and one joint update per batch;
* ``released``: a fixed GAN weight, the batch-statistics discriminator, AdamW (0.9, 0.95) with weight decay
  0.01 (tokenizer: >=2-D non-bias weights; discriminator: all), EMA 0.9999 without warm-up, and one update per
  part (an image and a video update per batch: twice the tokenizer updates for the same batches).

Scores (per-frame PSNR and SSIM on the [0, 1] scale, HBQ-quantised) are given for the EMA weights (what
validation and a saved checkpoint use) and for the live weights. Each run's result is written atomically to
``<workdir>/<arm>_seed<seed>.json`` (kept unless ``--force``) and the markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenizer_ablation import fit_quietly, reconstruct, run_missing, scores  # noqa: E402  (same scoring as the ablation)

from grn.entrypoints.common import CONF_DIR  # noqa: E402
from grn.io import atomic_write_bytes  # noqa: E402

LIT = "stages.tokenizer.lit_module"
COMMON = (
    "experiment=tokenizer_tiny_joint",
    f"{LIT}.l1_weight=1.0",
    f"{LIT}.lpips_weight=0.2",
    f"{LIT}.gan_weight=0.3",
    f"{LIT}.disc_start=0",
    f"{LIT}.lr=1e-3",
)
ARMS = {
    "ours": (),
    "released": (
        "+recipe=tokenizer_official",
        # the recipe's full-size discriminator and VGG LPIPS are put back to the tiny experiment's, as in "ours"
        f"{LIT}.discriminator.base_channels=32",
        f"{LIT}.discriminator.num_layers=2",
        f"{LIT}.lpips.net=alex",
    ),
}


def compose_arm(arm: str, steps: int, seed: int, overrides: list[str]):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        # COMMON after the arm: the same weights and lr in both (the recipe would set lr 1e-4, LPIPS 1.0)
        return compose(
            "train",
            overrides=[*ARMS[arm][:1], *COMMON, *ARMS[arm][1:], f"stages.tokenizer.max_steps={steps}",
                       f"seed={seed}", *overrides],
        )


def run_arm(arm: str, seed: int, args) -> dict:
    cfg = compose_arm(arm, args.steps, seed, args.override)
    stage = cfg.stages.tokenizer
    L.seed_everything(seed, workers=True, verbose=False)  # same init and batches in both arms
    datamodule = instantiate(stage.datamodule)
    module = instantiate(stage.lit_module)
    trainer, seconds = fit_quietly(module, datamodule, int(stage.max_steps), args.print_every, arm)
    images, clips = datamodule.photos.val_images(), datamodule.gif.val_clips()
    live = copy.deepcopy(module.tokenizer).eval()
    result = {"arm": arm, "seed": seed, "steps": int(trainer.global_step), "train_seconds": round(seconds, 1),
              "tokenizer_updates": int(module.ema.num_updates), "hparams": {
                  k: v for k, v in module.hparams.items() if k not in ("tokenizer", "discriminator", "lpips")},
              "discriminator_norm": module.discriminator.norm_type}
    for name, tok in (("ema", module.ema_tokenizer()), ("live", live)):
        result[name] = {
            "image": scores(images, reconstruct(tok, images, True)),
            "video": scores(clips, reconstruct(tok, clips, True)),
        }
    return result


def table(results: list[dict]) -> str:
    rows = [
        "| recipe | lr | seed | weights | image PSNR (dB) | image SSIM | GIF clip PSNR (dB) | GIF clip SSIM "
        "| batches | tokenizer updates | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (-r["hparams"]["lr"], r["seed"], list(ARMS).index(r["arm"]))):
        for weights in ("ema", "live"):
            s = r[weights]
            rows.append(
                f"| {r['arm']} | {r['hparams']['lr']:g} | {r['seed']} | {weights} | {s['image']['psnr']:.2f} | {s['image']['ssim']:.3f} "
                f"| {s['video']['psnr']:.2f} | {s['video']['ssim']:.3f} | {r['steps']} | {r['tokenizer_updates']} "
                f"| {r['train_seconds'] / 60:.1f} min |"
            )
    return "\n".join(rows) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--override", action="append", default=[], help="extra Hydra override for both arms")
    p.add_argument("--workdir", default="runs/tokenizer_recipe_compare")
    p.add_argument("--out", default="runs/tokenizer_recipe_compare/table.md")
    p.add_argument("--print-every", type=int, default=50)
    p.add_argument("--force", action="store_true", help="re-run arms that already have results")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    workdir = run_missing(args, args.arms, run_arm)
    results = [json.loads(p.read_text()) for p in sorted(workdir.glob("*_seed*.json"))]
    if not results:
        raise SystemExit(f"no results in {workdir}: run some arms first")
    text = table(results)
    atomic_write_bytes(text.encode(), args.out)
    print(text)
    return results


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
