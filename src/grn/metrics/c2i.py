"""The paper's class-to-image protocol (``python eval.py task=c2i``), every rank calling :func:`evaluate`.

``eval.num_per_class`` images of every class (50 per class = 50K for ImageNet), generated with the given sampler
settings, quantised to uint8 exactly as a PNG stores them, then scored with FID / IS (torch-fidelity; Inception from
a local path, or the ``grn-digits`` stand-in) against reference statistics from an ``.npz`` whose sha256 is
recorded, plus the digits classifier's conditional accuracy where a classifier is configured. Every rank generates
its share of the batches (:func:`grn.metrics.protocol.balanced_batches`), extracts features and all-reduces the
statistics in float64 (:mod:`grn.metrics.distributed`); nothing runs on rank 0 alone behind a barrier.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.progress import Progress

from grn.metrics.distributed import all_reduce, gather_grid
from grn.metrics.fid import FidIsAccumulator, ReferenceStats, build_feature_extractor, to_uint8
from grn.metrics.protocol import balanced_batches, metric_name
from grn.sampling.config import SamplerConfig

if TYPE_CHECKING:
    from grn.pipeline import GRNPipeline

__all__ = [
    "class_grid",
    "classifier_of",
    "evaluate",
    "fid_accumulator",
    "save_class_grid",
    "tokenizer_recon",
    "write_pngs",
]


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
    start = time.perf_counter()
    num_classes, per_class = pipe.generator.num_classes, int(eval_cfg.num_per_class)
    device = str(pipe.device)
    classifier, classifier_acc = classifier_of(eval_cfg, device)
    fid, reference = fid_accumulator(eval_cfg, device, num_classes * per_class)
    keep = int(eval_cfg.get("keep_per_class", 8))
    grid_classes = int(eval_cfg.get("grid_classes", 10))
    save_dir = Path(eval_cfg.save_images) if eval_cfg.get("save_images") else None

    config = SamplerConfig.build(sampler)  # built once; the settings record keeps the plain ``sampler`` dict
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
        all_reduce(t)
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
        extractor = eval_cfg.fid.feature_extractor
        if "fid" in scores:
            metrics[metric_name("fid", extractor)] = round(scores["fid"], 4)
            metrics["fid_reference"] = {"path": reference.path, "sha256": reference.sha256}
        metrics[metric_name("inception_score", extractor)] = round(scores["inception_score_mean"], 4)
        metrics[metric_name("inception_score_std", extractor)] = round(scores["inception_score_std"], 4)
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


def write_pngs(pixels: torch.Tensor, index: torch.Tensor, classes: torch.Tensor, folder: Path) -> None:
    """One PNG per sample: ``<folder>/<class>/<global index>.png`` (uint8 ``[B, 3, H, W]``)."""
    from PIL import Image

    for img, i, c in zip(
        pixels.cpu(), index.tolist(), classes.tolist()
    ):  # file I/O: one call per image anyway
        (folder / f"{c:04d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{c:04d}" / f"{i:06d}.png")


def class_grid(images: torch.Tensor, classes: torch.Tensor, per_row: int) -> torch.Tensor:
    """The first ``per_row`` images of each class, one row per class (classes in order)."""
    rows = [images[classes == c][:per_row] for c in classes.unique(sorted=True)]
    return torch.cat(rows)


def save_class_grid(images: torch.Tensor, classes: torch.Tensor, eval_cfg: DictConfig, path: Path) -> None:
    """The kept images as a PNG, one row per class of ``min(eval.keep_per_class, eval.num_per_class)`` images."""
    from torchvision.utils import save_image

    per_row = min(int(eval_cfg.get("keep_per_class", 8)), int(eval_cfg.num_per_class))
    grid = ((class_grid(images, classes, per_row) + 1) / 2).clamp(0, 1)
    save_image(grid, path, nrow=per_row, padding=2, pad_value=0.5)
