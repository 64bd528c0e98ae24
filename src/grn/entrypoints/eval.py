"""``python eval.py ckpt=<generator.ckpt>``: sample class-balanced images and score them; writes a metrics JSON.

The digits protocol (``eval=digits``): ``num_per_class`` images per class, scored by an independent CNN classifier
trained on the train split (conditional accuracy = share assigned to the requested class), plus the tokenizer's
PSNR on the held-out digits. The JSON records every setting that produced the numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress
from torchvision.utils import save_image

from grn.entrypoints.common import CONF_DIR
from grn.io import atomic_write_json
from grn.lit_modules.config import plain_config
from grn.metrics.digits import load_or_train_classifier, predict
from grn.metrics.recon import reconstruction_metrics
from grn.pipeline import GRNPipeline

log = logging.getLogger("grn.eval")


def sampler_settings(sampler: DictConfig | dict) -> dict[str, Any]:
    opts = dict(plain_config(sampler))
    opts.pop("seed", None)
    return opts


def generate_balanced(
    pipe: GRNPipeline, num_per_class: int, batch_size: int, seed: int, sampler: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``num_per_class`` images of every class, in class order -> (images [N,3,H,W], classes [N], stats).

    stats: ``steps`` ``[N]`` (refinement steps per image), ``passes`` (network passes per image, the unconditional
    ones included) and the per-step means of the sampler's statistics.
    """
    classes = torch.arange(pipe.generator.num_classes).repeat_interleave(num_per_class)
    images, steps, per_step = [], [], []
    passes = 0.0
    chunks = classes.split(batch_size)
    with Progress(transient=True) as bar:
        task = bar.add_task(f"sampling {len(classes)} images", total=len(chunks))
        outs = []
        for i, chunk in enumerate(chunks):
            outs.append(pipe(chunk, seed=seed + i, **sampler))  # a distinct, reproducible stream per batch
            bar.advance(task)
    for out in outs:
        images.append(out.images.cpu())
        steps.append(out.steps.cpu())
        active, scale = out.stats["active"].cpu(), out.stats["cfg_scale"].cpu()
        passes += float((active * (1 + (scale != 1).float())).sum())  # approximate where scales differ per sample
        per_step.append({k: v.float().cpu() for k, v in out.stats.items() if k != "warmup_entropy"})  # per step
    length = max(len(s["entropy"]) for s in per_step)
    padded = {k: [torch.nn.functional.pad(s[k], (0, length - len(s[k])), value=float("nan")) for s in per_step] for k in per_step[0]}
    stats = {k: torch.stack(v).nanmean(0) for k, v in padded.items()}  # batches may stop at different steps
    stats["steps"] = torch.cat(steps)
    stats["passes"] = torch.tensor(passes / len(classes))
    return torch.cat(images), classes, stats


def evaluate(
    pipe: GRNPipeline, eval_cfg: DictConfig, sampler: dict[str, Any], seed: int
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Digits protocol -> (metrics, images, classes)."""
    start = time.perf_counter()
    classifier, classifier_acc = load_or_train_classifier(eval_cfg.classifier_cache)
    images, classes, stats = generate_balanced(pipe, int(eval_cfg.num_per_class), int(eval_cfg.batch_size), seed, sampler)
    pred = predict(classifier, images)
    correct = (pred == classes).float()
    per_class = correct.view(-1, int(eval_cfg.num_per_class)).mean(1)
    data = instantiate(eval_cfg.data)
    data.setup("validate")
    val_images = torch.stack([data.val_set[i]["image"] for i in range(len(data.val_set))])
    recon = reconstruction_metrics(pipe.tokenizer, val_images, device=pipe.device)
    metrics = {
        "conditional_accuracy": round(float(correct.mean()), 4),
        "conditional_accuracy_per_class": [round(float(a), 4) for a in per_class],
        "classifier_val_accuracy": round(float(classifier_acc), 4),
        "tokenizer_psnr": round(float(recon["psnr"]), 3),
        "tokenizer_l1": round(float(recon["l1"]), 5),
        "num_images": int(len(classes)),
        "mean_steps": round(float(stats["steps"].float().mean()), 2),
        "network_passes_per_image": round(float(stats["passes"]), 2),
        "mean_entropy_per_step": [round(float(x), 4) for x in stats["entropy"]],
        "eval_seconds": round(time.perf_counter() - start, 1),
    }
    return metrics, images, classes


def settings_record(ckpt: str, tokenizer_ckpt: str | None, ema: str | None, sampler: dict, seed: int, eval_cfg) -> dict:
    return {
        "ckpt": str(Path(ckpt).resolve()),
        "tokenizer_ckpt": str(tokenizer_ckpt) if tokenizer_ckpt else None,
        "ema": ema,
        "seed": seed,
        "sampler": sampler,
        "eval": OmegaConf.to_container(eval_cfg, resolve=True),
    }


def class_grid(images: torch.Tensor, classes: torch.Tensor, per_row: int) -> torch.Tensor:
    """The first ``per_row`` images of each class, one row per class (classes in order)."""
    rows = [images[classes == c][:per_row] for c in classes.unique(sorted=True)]
    return torch.cat(rows)


def report(cfg: DictConfig, c2i_ckpt: Path, run_dir: Path, train_seconds: dict | None = None) -> dict[str, Any]:
    """End-of-run report for the demo: ``samples.png`` (one row per class) and ``metrics.json``."""
    pipe = GRNPipeline.from_checkpoint(c2i_ckpt, ema="ema1")
    sampler = sampler_settings(cfg.sampler)
    metrics, images, classes = evaluate(pipe, cfg.eval, sampler, int(cfg.sampler.seed))
    per_row = min(8, int(cfg.eval.num_per_class))  # one row per class
    grid = ((class_grid(images, classes, per_row) + 1) / 2).clamp(0, 1)
    save_image(grid, run_dir / "samples.png", nrow=per_row, padding=2, pad_value=0.5)
    timings = {k: v for k, v in (train_seconds or {}).items() if k.endswith("_seconds")}
    record = {
        **metrics,
        **timings,
        "settings": settings_record(str(c2i_ckpt), pipe.tokenizer_ckpt, "ema1", sampler, int(cfg.sampler.seed), cfg.eval),
    }
    atomic_write_json(record, run_dir / "metrics.json")
    from grn.entrypoints.console import console

    console.print(
        f"[bold green]conditional accuracy {metrics['conditional_accuracy']:.3f}[/bold green] "
        f"(classifier held-out accuracy {metrics['classifier_val_accuracy']:.3f}), "
        f"tokenizer PSNR {metrics['tokenizer_psnr']:.2f} dB -> {run_dir / 'samples.png'}, {run_dir / 'metrics.json'}"
    )
    return record


def default_out(ckpt: str, settings: dict) -> Path:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(ckpt).resolve().parent.parent / "eval" / f"metrics-{digest}.json"


def run(cfg: DictConfig) -> Path:
    pipe = GRNPipeline.from_checkpoint(cfg.ckpt, tokenizer_ckpt=cfg.tokenizer_ckpt, ema=cfg.ema, device=cfg.device)
    sampler = sampler_settings(cfg.sampler)
    seed = int(cfg.seed)
    settings = settings_record(cfg.ckpt, pipe.tokenizer_ckpt, cfg.ema, sampler, seed, cfg.eval)
    metrics, _, _ = evaluate(pipe, cfg.eval, sampler, seed)
    out = Path(cfg.out) if cfg.out else default_out(cfg.ckpt, settings)
    atomic_write_json({**metrics, "settings": settings}, out)
    log.info("conditional accuracy %.4f -> %s", metrics["conditional_accuracy"], out)
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
