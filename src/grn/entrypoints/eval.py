"""``python eval.py ckpt=<generator.ckpt>``: the paper's evaluation protocol from config; a JSON beside the checkpoint.

Generator (``task=c2i``, the default): ``eval.num_per_class`` images of every class (50 per class = 50K for
ImageNet), generated with the configured sampler and EMA, quantised to uint8 exactly as a PNG stores them, then
scored with FID / IS (torch-fidelity; Inception from a local path, or the ``grn-digits`` stand-in) against reference
statistics from an ``.npz`` whose sha256 is recorded, plus the digits classifier's conditional accuracy where a
classifier is configured. Under ``torchrun`` every rank generates its share of the batches (batch ``b`` on rank
``b % world``, seeded ``seed + b``, so the image set does not depend on the world size), extracts features and
all-reduces the statistics in float64; nothing runs on rank 0 alone behind a barrier.

Tokenizer (``task=tokenizer ckpt=<tokenizer.ckpt>``): PSNR, SSIM, LPIPS and rFID on the held-out set, and a
side-by-side PNG (originals above, reconstructions below). See :mod:`grn.entrypoints.eval_tokenizer`.

The JSON records the metrics and every setting that produced them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from grn.entrypoints.common import CONF_DIR
from grn.entrypoints.errors import cli_errors
from grn.entrypoints.validate import validate_eval

if TYPE_CHECKING:  # the models and metrics are imported once the config is validated (fast one-line errors)
    from grn.metrics.fid import FidIsAccumulator, ReferenceStats
    from grn.pipeline import GRNPipeline

log = logging.getLogger("grn.eval")


# ---------------------------------------------------------------------------------------------- distribution
def init_distributed(device: str) -> tuple[int, int, str]:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1): NCCL on CUDA, else gloo.

    Returns ``(rank, world_size, device)``; on CUDA each rank takes ``cuda:$LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if str(device).startswith("cuda"):
            device = f"cuda:{torch.cuda.current_device()}"
        return rank, world, device
    return 0, 1, device


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def balanced_batches(num_classes: int, num_per_class: int, batch_size: int, rank: int = 0, world: int = 1):
    """This rank's batches of the class-balanced list ``[0]*n, [1]*n, ...``: ``[(b, global_index int64 [B])]``.

    Batch ``b`` goes to rank ``b % world``; the union over ranks is every index exactly once.
    """
    total = num_classes * num_per_class
    starts = range(0, total, batch_size)
    return [
        (b, torch.arange(s, min(s + batch_size, total))) for b, s in enumerate(starts) if b % world == rank
    ]


def sampler_settings(sampler: DictConfig | dict, device: str = "cpu") -> dict[str, Any]:
    """The sampler keys as plain values, without ``seed`` (passed apart), and ``precision: auto`` resolved for
    ``device``: the settings record says which dtype produced the images (and its digest tells them apart)."""
    from grn.lit_modules.config import plain_config
    from grn.precision import resolve_precision

    opts = dict(plain_config(sampler))
    opts.pop("seed", None)
    if "precision" in opts:
        opts["precision"] = resolve_precision(opts["precision"], device)
    return opts


# ---------------------------------------------------------------------------------------------- generator protocol
def classifier_of(eval_cfg: DictConfig, device: str):
    """The digits classifier and its held-out accuracy, or ``(None, None)`` where none is configured."""
    if not eval_cfg.get("classifier_cache"):
        return None, None
    from grn.metrics.digits import load_or_train_classifier

    model, acc = load_or_train_classifier(eval_cfg.classifier_cache)
    return model.to(device), acc


def fid_accumulator(
    eval_cfg: DictConfig, device: str, num_images: int
) -> tuple[FidIsAccumulator | None, ReferenceStats | None]:
    """The FID/IS accumulator and the reference statistics (built first where the config allows), or Nones."""
    from grn.metrics.fid import FidIsAccumulator, build_feature_extractor
    from grn.metrics.reference import ensure_reference_stats

    fid_cfg = eval_cfg.get("fid")
    if not fid_cfg or not fid_cfg.get("enabled", True):
        return None, None
    extractor = build_feature_extractor(
        fid_cfg.feature_extractor, fid_cfg.feature_extractor_weights_path, device
    )
    splits = min(int(fid_cfg.isc_splits), num_images)  # tiny smoke runs: never a split without images
    acc = FidIsAccumulator(extractor, isc_splits=splits, batch_size=int(fid_cfg.batch_size))
    reference = (
        ensure_reference_stats(fid_cfg, acc, eval_cfg.get("data")) if fid_cfg.get("reference_stats") else None
    )
    return acc, reference


def evaluate(
    pipe: GRNPipeline, eval_cfg: DictConfig, sampler: dict[str, Any], seed: int, rank: int = 0, world: int = 1
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Run the protocol (every rank calls this) → ``(metrics, grid images [n, 3, H, W], their classes [n])``.

    Images are scored after the PNG round trip (uint8) when ``eval.png_round_trip``; the grid keeps the first
    ``eval.keep_per_class`` images of each of the first ``eval.grid_classes`` classes.
    """
    from grn.metrics.fid import to_uint8

    start = time.perf_counter()
    num_classes, per_class = pipe.generator.num_classes, int(eval_cfg.num_per_class)
    device = str(pipe.device)
    classifier, classifier_acc = classifier_of(eval_cfg, device)
    fid, reference = fid_accumulator(eval_cfg, device, num_classes * per_class)
    keep = int(eval_cfg.get("keep_per_class", 8))
    grid_classes = int(eval_cfg.get("grid_classes", 10))
    save_dir = Path(eval_cfg.save_images) if eval_cfg.get("save_images") else None

    from grn.sampling.config import SamplerConfig

    config = SamplerConfig.build(sampler)  # the settings record keeps the plain ``sampler`` dict
    max_steps = config.max_steps
    # sums over this rank's images / batches, all-reduced at the end (float64: exact for 50K counts)
    correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
    steps_sum, passes_sum = (
        torch.zeros((), dtype=torch.float64, device=device),
        torch.zeros((), dtype=torch.float64, device=device),
    )
    entropy_sum = torch.zeros(max_steps, dtype=torch.float64, device=device)
    entropy_n = torch.zeros(max_steps, dtype=torch.float64, device=device)
    step_hist = torch.zeros(max_steps + 1, dtype=torch.float64, device=device)
    kept, kept_classes = [], []
    batches = balanced_batches(num_classes, per_class, int(eval_cfg.batch_size), rank, world)
    with Progress(transient=True, disable=rank != 0) as bar:
        task = bar.add_task(
            f"sampling {num_classes * per_class} images on {world} rank(s)", total=len(batches)
        )
        for b, index in batches:
            classes = (index // per_class).to(device)
            out = pipe(classes, seed=seed + b, sampler=config)  # a distinct, reproducible stream per batch
            images = out.images
            pixels = to_uint8(images)
            if eval_cfg.get("png_round_trip", True):
                images = pixels.float() / 127.5 - 1.0  # what a PNG holds
            if save_dir is not None:
                write_pngs(pixels, index, classes, save_dir)
            if fid is not None:
                fid.update(pixels, index)
            if classifier is not None:
                from grn.metrics.digits import predict

                hit = (predict(classifier, images).to(device) == classes).double()
                correct.index_add_(0, classes, hit)
            steps_sum += out.steps.double().sum()
            step_hist += torch.bincount(out.steps.clamp(0, max_steps), minlength=max_steps + 1).double()
            # network passes: one per active sample per step, plus one where its guidance was on (exact)
            passes_sum += out.stats["network_rows"].double().sum()
            ent = out.stats["entropy"].double()
            entropy_sum[: len(ent)] += ent
            entropy_n[: len(ent)] += 1
            sel = classes < grid_classes
            for c in classes[sel].unique().tolist():
                have = sum(int((k == c).sum()) for k in kept_classes)
                if have < keep:
                    take = (classes == c).nonzero().squeeze(1)[: keep - have]
                    kept.append(images[take].cpu())
                    kept_classes.append(classes[take].cpu())
            bar.advance(task)

    for t in (correct, steps_sum, passes_sum, entropy_sum, entropy_n, step_hist):
        _all_reduce(t)
    n = num_classes * per_class
    metrics: dict[str, Any] = {
        "num_images": n,
        "world_size": world,
        "mean_steps": round(float(steps_sum) / n, 2),
        "network_passes_per_image": round(float(passes_sum) / n, 2),
        "mean_entropy_per_step": [
            round(float(x), 4) for x in (entropy_sum / entropy_n.clamp_min(1))[entropy_n > 0]
        ],
        "steps_histogram": {str(i): int(c) for i, c in enumerate(step_hist.tolist()) if c > 0},
    }
    if classifier is not None:
        per_class_acc = correct / per_class
        metrics["conditional_accuracy"] = round(float(correct.sum()) / n, 4)
        metrics["conditional_accuracy_per_class"] = [round(float(a), 4) for a in per_class_acc]
        metrics["classifier_val_accuracy"] = round(float(classifier_acc), 4)
    if fid is not None:
        scores = fid.compute(reference)
        # the stand-in's numbers carry its name, so they are never mistaken for Inception FID / IS
        prefix = "digits_" if eval_cfg.fid.feature_extractor == "grn-digits" else ""
        if "fid" in scores:
            metrics[f"{prefix}fid"] = round(scores["fid"], 4)
            metrics["fid_reference"] = {"path": reference.path, "sha256": reference.sha256}
        metrics[f"{prefix}inception_score"] = round(scores["inception_score_mean"], 4)
        metrics[f"{prefix}inception_score_std"] = round(scores["inception_score_std"], 4)
    images, classes = gather_grid(kept, kept_classes, world)  # the last collective: nobody waits after it
    if eval_cfg.get("data") is not None and rank == 0:
        metrics.update(tokenizer_recon(pipe, eval_cfg))  # small; only rank 0 writes the JSON anyway
    metrics["eval_seconds"] = round(time.perf_counter() - start, 1)
    return metrics, images, classes


def tokenizer_recon(pipe: GRNPipeline, eval_cfg: DictConfig) -> dict[str, float]:
    """The tokenizer's PSNR / L1 on the held-out split of ``eval.data`` (cheap; a sanity number beside FID)."""
    from grn.metrics.recon import reconstruction_metrics

    data = instantiate(eval_cfg.data)
    data.setup("validate")
    val_images = torch.stack([data.val_set[i]["image"] for i in range(len(data.val_set))])
    recon = reconstruction_metrics(pipe.tokenizer, val_images, device=pipe.device)
    return {"tokenizer_psnr": round(float(recon["psnr"]), 3), "tokenizer_l1": round(float(recon["l1"]), 5)}


def gather_grid(kept: list, kept_classes: list, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's kept images (a few per class) → sorted by class; ``all_gather_object`` when distributed."""
    images = torch.cat(kept) if kept else torch.empty(0)
    classes = torch.cat(kept_classes) if kept_classes else torch.empty(0, dtype=torch.long)
    if world > 1:
        parts: list = [None] * world
        dist.all_gather_object(parts, (images, classes))
        images = torch.cat([p[0] for p in parts if len(p[0])])
        classes = torch.cat([p[1] for p in parts if len(p[1])])
    order = torch.argsort(classes, stable=True)
    return images[order], classes[order]


def write_pngs(pixels: torch.Tensor, index: torch.Tensor, classes: torch.Tensor, folder: Path) -> None:
    """One PNG per sample: ``<folder>/<class>/<global index>.png`` (uint8 ``[B, 3, H, W]``)."""
    from PIL import Image

    for img, i, c in zip(
        pixels.cpu(), index.tolist(), classes.tolist()
    ):  # file I/O: one call per image anyway
        (folder / f"{c:04d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{c:04d}" / f"{i:06d}.png")


def task_overrides() -> list[str]:
    """The command-line overrides of this (Hydra) job, e.g. ``model/generator=small`` of a training sweep."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    try:
        return [str(o) for o in HydraConfig.get().overrides.task]
    except Exception:  # noqa: BLE001 - a partial Hydra config (tests, API use) simply records none
        return []


def settings_record(
    ckpt: str, tokenizer_ckpt: str | None, ema: str | None, sampler: dict, seed: int, eval_cfg
) -> dict:
    return {
        "ckpt": str(Path(ckpt).resolve()),
        "tokenizer_ckpt": str(tokenizer_ckpt) if tokenizer_ckpt else None,
        "ema": ema,
        "seed": seed,
        "sampler": sampler,
        "eval": OmegaConf.to_container(eval_cfg, resolve=True),
        "overrides": task_overrides(),
    }


def class_grid(images: torch.Tensor, classes: torch.Tensor, per_row: int) -> torch.Tensor:
    """The first ``per_row`` images of each class, one row per class (classes in order)."""
    rows = [images[classes == c][:per_row] for c in classes.unique(sorted=True)]
    return torch.cat(rows)


def report(
    cfg: DictConfig, c2i_ckpt: Path, run_dir: Path, train_seconds: dict | None = None
) -> dict[str, Any]:
    """End-of-run report for the demo: ``samples.png`` (one row per class) and ``metrics.json``."""
    from torchvision.utils import save_image

    from grn.io import atomic_write_json
    from grn.pipeline import GRNPipeline

    pipe = GRNPipeline.from_checkpoint(c2i_ckpt, ema="ema1")
    sampler = sampler_settings(cfg.sampler)
    metrics, images, classes = evaluate(pipe, cfg.eval, sampler, int(cfg.sampler.seed))
    per_row = min(int(cfg.eval.get("keep_per_class", 8)), int(cfg.eval.num_per_class))  # one row per class
    grid = ((class_grid(images, classes, per_row) + 1) / 2).clamp(0, 1)
    save_image(grid, run_dir / "samples.png", nrow=per_row, padding=2, pad_value=0.5)
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


def default_out(ckpt: str, settings: dict) -> Path:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(ckpt).resolve().parent.parent / "eval" / f"metrics-{digest}.json"


def eval_task(cfg: DictConfig) -> str:
    """``c2i`` or ``tokenizer``: the stage the chosen ``task`` config defines (eval reuses the train task group)."""
    stages = list(cfg.get("stages") or {})
    return "tokenizer" if stages == ["tokenizer"] else "c2i"


def run(cfg: DictConfig) -> Path:
    validate_eval(cfg, eval_task(cfg))
    if eval_task(cfg) == "tokenizer":
        from grn.entrypoints.eval_tokenizer import run_tokenizer

        return run_tokenizer(cfg)
    from torchvision.utils import save_image

    from grn.io import atomic_write_json
    from grn.pipeline import GRNPipeline

    rank, world, device = init_distributed(str(cfg.device))
    pipe = GRNPipeline.from_checkpoint(
        cfg.ckpt, tokenizer_ckpt=cfg.tokenizer_ckpt, ema=cfg.ema, device=device
    )
    sampler = sampler_settings(cfg.sampler, device)
    seed = int(cfg.seed)
    settings = settings_record(cfg.ckpt, pipe.tokenizer_ckpt, cfg.ema, sampler, seed, cfg.eval)
    out = Path(cfg.out) if cfg.out else default_out(cfg.ckpt, settings)
    metrics, images, classes = evaluate(pipe, cfg.eval, sampler, seed, rank, world)
    if rank == 0:
        atomic_write_json({**metrics, "settings": settings}, out)
        if len(images):
            per_row = min(int(cfg.eval.get("keep_per_class", 8)), int(cfg.eval.num_per_class))
            grid = ((class_grid(images, classes, per_row) + 1) / 2).clamp(0, 1)
            save_image(grid, out.with_suffix(".png"), nrow=per_row, padding=2, pad_value=0.5)
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
