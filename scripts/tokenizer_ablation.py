"""HBQ rounds ablation on real data (issue evidence, paper Fig. 5): the same tiny joint tokenizer trained for
M = 2, 4, 6, 8 HBQ rounds and without quantisation, reconstruction PSNR / SSIM on held-out photos and GIF clips.

    OMP_NUM_THREADS=2 nice python scripts/tokenizer_ablation.py            # all five runs, then the report
    python scripts/tokenizer_ablation.py --settings 8 continuous           # some runs (results are kept)
    python scripts/tokenizer_ablation.py --report-only                     # rewrite the report from results

Every run composes ``experiment=tokenizer_tiny_joint`` (extra ``--override key=value`` pairs go to Hydra), sets
``model.tokenizer.hbq_rounds`` / ``quantize`` for its setting and, by default, trains with L1 only
(``lpips_weight=0``: no ImageNet weights exist offline, and the random-trunk stand-in is no perceptual loss;
``gan_weight=0``: the adversarial term trades PSNR for sharpness and would only blur the comparison). Same seed,
so every setting starts from the same weights and sees the same batches. Each run's metrics are written
atomically to ``<workdir>/<setting>_seed<seed>.json`` (existing ones are reused unless ``--force``), a side-by-side
reconstruction PNG to ``<images>/tokenizer_ablation_<setting>.png``, and the table to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from grn import hbq
from grn.entrypoints.common import CONF_DIR
from grn.io import atomic_write_bytes, atomic_write_json
from grn.models.tokenizer import HBQTokenizer

log = logging.getLogger("tokenizer_ablation")

SETTINGS = ("2", "4", "6", "8", "continuous")
EXPERIMENT = "tokenizer_tiny_joint"
DEFAULT_OVERRIDES = (
    "stages.tokenizer.lit_module.lpips_weight=0",
    "stages.tokenizer.lit_module.gan_weight=0",
)
POST_HOC_ROUNDS = (2, 4, 6, 8)


def compose_run(setting: str, steps: int, overrides: list[str]):
    """The composed train config of one setting (``"2"``..``"8"`` HBQ rounds, or ``"continuous"``)."""
    quantize = setting != "continuous"
    rounds = int(setting) if quantize else 8  # unused by a continuous run, except by the post-hoc columns
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={EXPERIMENT}",
                *DEFAULT_OVERRIDES,
                f"model.tokenizer.hbq_rounds={rounds}",
                f"stages.tokenizer.lit_module.quantize={str(quantize).lower()}",
                f"stages.tokenizer.max_steps={steps}",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.run_dir = "unused"  # nothing is written through Hydra's run dir
    return cfg


class _PrintLosses(L.Callback):
    """One line per ``every`` steps on stdout (the run is otherwise silent)."""

    def __init__(self, every: int, name: str):
        self.every, self.name, self.start = every, name, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            l1 = trainer.callback_metrics.get("train/l1")
            elapsed = time.perf_counter() - self.start
            print(
                f"[{self.name}] step {step}/{trainer.max_steps} l1 {float(l1):.4f} {elapsed:.0f}s", flush=True
            )


@torch.no_grad()
def reconstruct(
    tok: HBQTokenizer, x: torch.Tensor, quantize: bool, rounds: int | None = None
) -> torch.Tensor:
    """Reconstruction of ``x`` ``[N, 3, (T,) H, W]`` in [-1, 1], clamped; ``rounds`` overrides M (post-hoc)."""
    features = tok.encode_features(x)
    if quantize:
        m = rounds or tok.hbq_rounds
        features = hbq.dequantize(hbq.quantize(features, m, "index"), m, "index")
    return tok.decode(features).clamp(-1.0, 1.0)


def _frames01(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, (T,) H, W]`` in [-1, 1] → ``[N·T, 3, H, W]`` in [0, 1]."""
    if x.dim() == 5:
        x = x.transpose(1, 2).flatten(0, 1)
    return (x + 1) / 2


def scores(x: torch.Tensor, rec: torch.Tensor) -> dict[str, float]:
    """Mean per-frame PSNR (dB) and SSIM on the [0, 1] scale."""
    a, b = _frames01(rec), _frames01(x)
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, dim=(1, 2, 3), reduction="none")
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}


def side_by_side_png(
    images: torch.Tensor, rec_images: torch.Tensor, clip: torch.Tensor, rec_clip: torch.Tensor
) -> bytes:
    """PNG bytes: row 1 held-out crops, row 2 their reconstructions, rows 3-4 one held-out clip's frames
    (up-scaled ×2, nearest) and their reconstructions. Inputs in [-1, 1]: ``[n, 3, S, S]``, ``[3, T, s, s]``."""
    import io

    from PIL import Image

    def row(x: torch.Tensor) -> np.ndarray:  # [n, 3, h, w] -> [h, n·(w + 2), 3] with 2-pixel gaps
        x = torch.nn.functional.pad(x, (0, 2, 0, 2), value=1.0)
        return x.permute(2, 0, 3, 1).flatten(1, 2).numpy()

    clip_up = lambda c: torch.nn.functional.interpolate(c.transpose(0, 1), scale_factor=2, mode="nearest")
    rows = [row(images), row(rec_images), row(clip_up(clip)), row(clip_up(rec_clip))]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=1.0) for r in rows]
    grid = ((np.concatenate(rows, axis=0) + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def fit_quietly(module, datamodule, steps: int, print_every: int, name: str) -> tuple[L.Trainer, float]:
    """Train ``module`` for ``steps`` steps on one CPU, silently but for a loss line every ``print_every``
    steps and without validation (the callers score the result themselves); returns the trainer and the
    training wall time in seconds."""
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, log_every_n_steps=max(1, min(50, steps)),
                        callbacks=[_PrintLosses(print_every, name)])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return trainer, time.perf_counter() - start


def run_setting(setting: str, seed: int, args) -> dict:
    cfg = compose_run(setting, args.steps, [*args.override, f"seed={seed}"])
    stage = cfg.stages.tokenizer
    L.seed_everything(seed, workers=True, verbose=False)  # same init and batches for every setting
    datamodule = instantiate(stage.datamodule)
    module = instantiate(stage.lit_module)
    trainer, train_seconds = fit_quietly(module, datamodule, int(stage.max_steps), args.print_every, setting)

    tok = module.ema_tokenizer()
    quantize = bool(stage.lit_module.quantize)
    images = datamodule.photos.val_images()  # [N, 3, S, S]
    clips = datamodule.gif.val_clips()  # [N, 3, T, s, s]
    rec_images, rec_clips = reconstruct(tok, images, quantize), reconstruct(tok, clips, quantize)
    result = {
        "setting": setting,
        "seed": seed,
        "hbq_rounds": int(cfg.model.tokenizer.hbq_rounds) if quantize else None,
        "quantize": quantize,
        "steps": int(trainer.global_step),
        "train_seconds": round(train_seconds, 1),
        "image": scores(images, rec_images),
        "video": scores(clips, rec_clips),
        "num_val_images": int(images.shape[0]),
        "num_val_clips": int(clips.shape[0]),
        "clip_frames": int(clips.shape[2]),
        "threads": torch.get_num_threads(),
        "host": platform.node(),
    }
    if not quantize:  # the continuous network with HBQ applied only at test time (never trained through it)
        result["post_hoc"] = {
            str(m): {
                "image": scores(images, reconstruct(tok, images, True, m)),
                "video": scores(clips, reconstruct(tok, clips, True, m)),
            }
            for m in POST_HOC_ROUNDS
        }
    if seed == args.seeds[0]:  # one picture per setting
        n = min(6, images.shape[0])
        pick = torch.linspace(0, images.shape[0] - 1, n).round().long()  # spread over both held-out photos
        png = side_by_side_png(images[pick], rec_images[pick], clips[0], rec_clips[0])
        atomic_write_bytes(png, Path(args.images) / f"tokenizer_ablation_{setting}.png")
    return result


def _mean(runs: list[dict], part: str, metric: str) -> float:
    return float(np.mean([r[part][metric] for r in runs]))


def _fmt(runs: list[dict], part: str) -> str:
    """``mean (seed a, seed b, …)`` for PSNR, then the mean SSIM."""
    psnr = ", ".join(f"{r[part]['psnr']:.2f}" for r in runs)
    per_seed = f" ({psnr})" if len(runs) > 1 else ""
    return f"{_mean(runs, part, 'psnr'):.2f}{per_seed} | {_mean(runs, part, 'ssim'):.3f}"


def write_report(results: dict[str, list[dict]], args) -> str:
    """``results[setting]`` = that setting's runs (one per seed)."""
    rows = [results[s] for s in SETTINGS if results.get(s)]
    if not rows:
        raise SystemExit(f"no results in {args.workdir}: run some settings first")
    first = rows[0][0]
    seeds = sorted({r["seed"] for runs in rows for r in runs})
    table = (
        "| setting | image PSNR (dB) | image SSIM | GIF clip PSNR (dB) | GIF clip SSIM | train steps | wall time |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    for runs in rows:
        r = runs[0]
        name = f"M = {r['hbq_rounds']}" if r["quantize"] else "continuous (no HBQ)"
        minutes = ", ".join(f"{x['train_seconds'] / 60:.1f}" for x in runs)
        table += (
            f"| {name} | {_fmt(runs, 'image')} | {_fmt(runs, 'video')} | {r['steps']} | {minutes} min |\n"
        )
    post = ""
    cont = [r for r in results.get("continuous", []) if "post_hoc" in r]
    if cont:
        post = (
            "\nThe continuous network with HBQ applied only at test time (it was never trained through the "
            "quantiser), for comparison:\n\n| M at test time | image PSNR (dB) | image SSIM | GIF clip PSNR (dB) | "
            "GIF clip SSIM |\n|---|---|---|---|---|\n"
        )
        for m in cont[0]["post_hoc"]:
            post_runs = [r["post_hoc"][m] for r in cont]
            post += f"| {m} | {_fmt(post_runs, 'image')} | {_fmt(post_runs, 'video')} |\n"
    images = "\n".join(
        f"- {('M = ' + s) if s != 'continuous' else 'continuous'}: ![{s}](images/tokenizer_ablation_{s}.png)"
        for s in SETTINGS
        if results.get(s)
    )
    extra = " ".join(f"--override {o}" for o in args.override)
    text = f"""# HBQ rounds ablation: reconstruction vs M (real data, CPU)

Does a tokenizer quantised with M HBQ rounds reconstruct as well as the same network without quantisation?
The paper's Fig. 5 says M = 8 matches the continuous tokenizer. Measured here on a tiny joint image/video
tokenizer (`model/tokenizer=tiny_joint`: 2×2 patchify, stride 8 in space and 4 in time, d = 8, 2.6 M
parameters), trained from the same initialisation on the same batches for each setting.

## Setup

- Data (real, offline, `data=photos_gif`): random 32×32 crops with flips from six skimage colour photos
  (resized to a 256-pixel short side), plus 5-frame 32×32 clips from the first 14 frames of
  `skimage/data/no_time_for_that_tiny.gif` (25×14 pixels, up-sampled ×2.3). Every step sees 8 crops and 2 clips.
- Held out: {first["num_val_images"]} fixed crops (a 4×4 grid) of two photos never trained on (chelsea, coffee),
  and {first["num_val_clips"]} fixed {first["clip_frames"]}-frame clips from the last 10 GIF frames (a time range never trained on).
- Loss: L1 only (`lpips_weight=0`: no ImageNet weights offline and the random-trunk stand-in is not a
  perceptual loss; `gan_weight=0`: an adversarial term trades PSNR for texture). AdamW lr 1e-3, EMA 0.99,
  {first["steps"]} steps; HBQ with the straight-through estimator for the quantised runs.
- Metrics on the EMA weights: per-image (per-frame) PSNR and SSIM on the [0, 1] scale, averaged.
- Seeds {", ".join(map(str, seeds))}: each seed changes the initialisation and the crops; PSNR is given as
  the mean over seeds with the per-seed values in brackets, SSIM as the mean.
- Machine: a 2-core CPU shared with other jobs (load 2-9 during these runs), {first["threads"]} thread per run,
  `nice`; wall time is training only and mostly measures the machine's load.

## Results

{table}{post}
## Reading it against the paper (Fig. 5)

{args.verdict or "(see the table)"}

## Reconstructions (held-out)

Row 1: held-out photo crops; row 2: their reconstructions; rows 3-4: the first held-out GIF clip (×2, nearest)
and its reconstruction.

{images}

## Rerun

```
OMP_NUM_THREADS={first["threads"]} nice python scripts/tokenizer_ablation.py --steps {first["steps"]} --seeds {" ".join(map(str, seeds))}{(" " + extra) if extra else ""}
```
Each run's metrics are kept in `{args.workdir}/<setting>_seed<seed>.json` (a re-run skips those that exist);
`--report-only --verdict "..."` rewrites this page from them.
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(text.encode(), args.out)
    return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one run per seed and setting")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--workdir", default="runs/tokenizer_ablation", help="per-setting result JSONs")
    p.add_argument("--images", default="docs/images", help="where the side-by-side PNGs go")
    p.add_argument("--out", default="docs/tokenizer_ablation.md")
    p.add_argument("--verdict", default="", help="the comparison paragraph for the report (markdown)")
    p.add_argument("--print-every", type=int, default=100)
    p.add_argument("--force", action="store_true", help="re-run settings that already have results")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def run_missing(args, names, run) -> Path:
    """``run(name, seed, args)`` for every seed and name (seed-major, one at a time) whose
    ``<args.workdir>/<name>_seed<seed>.json`` does not exist yet (or all with ``args.force``), each result
    written there atomically; nothing with ``args.report_only``. $OMP_NUM_THREADS sets torch's threads.
    Returns the workdir."""
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    workdir = Path(args.workdir)
    if args.report_only:
        return workdir
    for seed in args.seeds:  # seed-major: a first full table comes early
        for name in names:
            path = workdir / f"{name}_seed{seed}.json"
            if path.is_file() and not args.force:
                print(f"[{name}] kept {path}", flush=True)
                continue
            result = run(name, seed, args)
            atomic_write_json(result, path)
            print(json.dumps(result), flush=True)
    return workdir


def main(argv=None) -> dict[str, dict]:
    args = parse_args(argv)
    workdir = run_missing(args, args.settings, run_setting)
    results = {
        s: [json.loads(p.read_text()) for p in sorted(workdir.glob(f"{s}_seed*.json"))] for s in SETTINGS
    }
    write_report(results, args)
    return results


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
