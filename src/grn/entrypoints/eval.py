"""``python eval.py ckpt=<checkpoint>``: the evaluation protocols from config; a JSON beside the checkpoint.

A thin CLI over the library in :mod:`grn.metrics`: it validates the config, loads the checkpoint and writes the
results. The task (the ``task`` group that training uses too) picks the protocol:

* ``task=c2i`` (the default): class-balanced samples scored by FID / IS and the digits classifier, spread over the
  ranks of ``torchrun`` (:func:`grn.metrics.c2i.evaluate`); a class grid PNG beside the JSON.
* ``task=tokenizer``: PSNR, SSIM, LPIPS and rFID on held-out data and a side-by-side PNG
  (:mod:`grn.entrypoints.eval_tokenizer`).
* ``task=t2i`` / ``task=t2v``: caption-conditional accuracy of a T2I model, direction and digit accuracy of a T2V
  model plus its image-to-video measurement, on captioned (moving) digits (:mod:`grn.entrypoints.eval_t2iv`,
  :mod:`grn.metrics.t2iv_digits`); sample grids beside the JSON.

The JSON records the metrics and every setting that produced them (:func:`grn.metrics.protocol.settings_record`);
its default name carries a digest of those settings (:func:`grn.metrics.protocol.eval_path`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from grn.entrypoints.common import CONF_DIR
from grn.entrypoints.errors import cli_errors
from grn.entrypoints.validate import validate_eval

log = logging.getLogger("grn.eval")


def sampler_settings(sampler: DictConfig | dict, device: str = "cpu") -> dict[str, Any]:
    """The sampler keys as plain values, without ``seed`` (passed apart), and ``precision: auto`` resolved for
    ``device``: the settings record says which dtype produced the images (and its digest tells them apart)."""
    from grn.checkpoints.values import plain_config
    from grn.precision import resolve_precision

    opts = dict(plain_config(sampler))
    opts.pop("seed", None)
    if "precision" in opts:
        opts["precision"] = resolve_precision(opts["precision"], device)
    return opts


def report(
    cfg: DictConfig, c2i_ckpt: Path, run_dir: Path, train_seconds: dict | None = None
) -> dict[str, Any]:
    """End-of-run report for the demo: ``samples.png`` (one row per class) and ``metrics.json``."""
    from grn.io import atomic_write_json
    from grn.metrics.c2i import evaluate, save_class_grid
    from grn.metrics.protocol import settings_record
    from grn.pipeline import GRNPipeline

    pipe = GRNPipeline.from_checkpoint(c2i_ckpt, ema="ema1")
    sampler = sampler_settings(cfg.sampler)
    metrics, images, classes = evaluate(pipe, cfg.eval, sampler, int(cfg.sampler.seed))
    save_class_grid(images, classes, cfg.eval, run_dir / "samples.png")
    timings = {k: v for k, v in (train_seconds or {}).items() if k.endswith("_seconds")}
    record = {
        **metrics,
        **timings,
        "settings": settings_record(
            str(c2i_ckpt), pipe.tokenizer_ckpt, "ema1", sampler, int(cfg.sampler.seed), cfg.eval
        ),
    }
    atomic_write_json(record, run_dir / "metrics.json")
    from grn.entrypoints.console import console

    extra = f", digits-FID {metrics['digits_fid']:.3f}" if "digits_fid" in metrics else ""
    console.print(
        f"[bold green]conditional accuracy {metrics.get('conditional_accuracy', float('nan')):.3f}[/bold green] "
        f"(classifier held-out accuracy {metrics.get('classifier_val_accuracy', float('nan')):.3f}){extra}, "
        f"tokenizer PSNR {metrics.get('tokenizer_psnr', float('nan')):.2f} dB -> {run_dir / 'samples.png'}, "
        f"{run_dir / 'metrics.json'}"
    )
    return record


def eval_task(cfg: DictConfig) -> str:
    """``c2i``, ``tokenizer``, ``t2i`` or ``t2v``: the stage the chosen ``task`` config defines (eval reuses the
    train task group)."""
    stages = list(cfg.get("stages") or {})
    return stages[0] if stages in (["tokenizer"], ["t2i"], ["t2v"]) else "c2i"


def run(cfg: DictConfig) -> Path:
    task = eval_task(cfg)
    validate_eval(cfg, task)
    if task == "tokenizer":
        from grn.entrypoints.eval_tokenizer import run_tokenizer

        return run_tokenizer(cfg)
    if task in ("t2i", "t2v"):
        from grn.entrypoints.eval_t2iv import run_t2iv

        return run_t2iv(cfg, task, sampler_settings(cfg.sampler))
    from grn.io import atomic_write_json
    from grn.metrics.c2i import evaluate, save_class_grid
    from grn.metrics.distributed import init_distributed
    from grn.metrics.protocol import eval_path, settings_record
    from grn.pipeline import GRNPipeline

    rank, world, device = init_distributed(str(cfg.device))
    pipe = GRNPipeline.from_checkpoint(
        cfg.ckpt, tokenizer_ckpt=cfg.tokenizer_ckpt, ema=cfg.ema, device=device
    )
    sampler = sampler_settings(cfg.sampler, device)
    seed = int(cfg.seed)
    settings = settings_record(cfg.ckpt, pipe.tokenizer_ckpt, cfg.ema, sampler, seed, cfg.eval)
    out = Path(cfg.out) if cfg.out else eval_path(cfg.ckpt, "metrics", settings)
    metrics, images, classes = evaluate(pipe, cfg.eval, sampler, seed, rank, world)
    if rank == 0:
        atomic_write_json({**metrics, "settings": settings}, out)
        if len(images):
            save_class_grid(images, classes, cfg.eval, out.with_suffix(".png"))
        shown = {
            k: metrics[k]
            for k in ("conditional_accuracy", "fid", "digits_fid", "inception_score")
            if k in metrics
        }
        log.info("%s -> %s", shown, out)
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@cli_errors
def main(cfg: DictConfig) -> float | None:
    out = run(cfg)
    key = cfg.get("sweep_metric")
    if not key or not out.is_file():
        return None
    value = json.loads(out.read_text()).get(key)
    return float(value) if value is not None else None  # the objective of an Optuna sweep


if __name__ == "__main__":
    main()
