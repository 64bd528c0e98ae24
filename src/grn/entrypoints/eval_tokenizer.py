"""``python eval.py task=tokenizer ckpt=<tokenizer.ckpt>``: reconstruction metrics of a tokenizer on held-out data.

PSNR, SSIM, L1, LPIPS (offline weights, or the labelled random-trunk stand-in of the demo config) and rFID (the
``eval.fid`` extractor: Inception from a local path, or the digits stand-in) on the held-out split of ``eval.data``;
writes ``<ckpt dir>/../eval/recon-<hash>.json`` and a side-by-side PNG (originals above, reconstructions below), or
an MP4 (original | reconstruction) for videos.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from grn.io import atomic_write_json
from grn.metrics.protocol import eval_path, metric_name
from grn.metrics.recon import reconstruct, reconstruction_metrics, side_by_side

log = logging.getLogger("grn.eval")


def held_out_images(data_cfg: DictConfig, num_images: int | None) -> torch.Tensor:
    """The held-out (validation) images of a datamodule config: ``[N, 3, (T,) H, W]`` in [-1, 1]."""
    if data_cfg is None:
        raise ValueError(
            "task=tokenizer needs eval.data (a datamodule whose val_set holds the held-out images)"
        )
    data = instantiate(data_cfg)
    data.setup("validate")
    n = len(data.val_set) if num_images is None else min(int(num_images), len(data.val_set))
    key = "video" if "video" in data.val_set[0] else "image"
    return torch.stack([data.val_set[i][key] for i in range(n)])


def recon_tools(cfg: DictConfig, device: str) -> dict[str, Any]:
    """LPIPS and the rFID extractor from ``eval.recon.lpips`` / ``eval.fid`` (either may be switched off)."""
    from grn.losses.perceptual import build_lpips
    from grn.metrics.fid import build_feature_extractor

    tools: dict[str, Any] = {}
    lp = cfg.eval.recon.get("lpips")
    if lp:
        tools["lpips"] = build_lpips(lp.backbone_weights, bool(lp.allow_random_backbone), lp.net).to(device)
    fid = cfg.eval.get("fid")
    if fid and fid.get("enabled", True):
        tools["feature_extractor"] = build_feature_extractor(
            fid.feature_extractor, fid.feature_extractor_weights_path, device
        )
    if cfg.eval.recon.get("video_features"):
        tools["video_features"] = instantiate(cfg.eval.recon.video_features).to(device)
    return tools


def run_tokenizer(cfg: DictConfig) -> Path:
    """Score the tokenizer checkpoint ``cfg.ckpt``; returns the JSON path (the PNG/MP4 sits beside it)."""
    from grn.checkpoints import load_tokenizer

    start = time.perf_counter()
    device = str(cfg.device)
    tokenizer = load_tokenizer(cfg.ckpt, map_location=device, use_ema=cfg.ema is not None)
    recon_cfg = cfg.eval.recon
    tools = recon_tools(cfg, device)  # before any heavy work: a missing weights file fails here, in one line
    images = held_out_images(cfg.eval.get("data"), recon_cfg.get("num_images"))
    metrics = reconstruction_metrics(tokenizer, images, int(recon_cfg.batch_size), device, **tools)
    settings = {
        "task": "tokenizer",
        "ckpt": str(Path(cfg.ckpt).resolve()),
        "ema": cfg.ema is not None,
        "eval": OmegaConf.to_container(cfg.eval, resolve=True),
    }
    record = {k: round(float(v), 5) for k, v in metrics.items()}
    record.update(
        num_images=int(len(images)), eval_seconds=round(time.perf_counter() - start, 1), settings=settings
    )
    if "lpips" in tools:
        record["lpips_stand_in"] = bool(tools["lpips"].stand_in)
    if "feature_extractor" in tools and (rfid := metric_name("rfid", cfg.eval.fid.feature_extractor)) != "rfid":
        record[rfid] = record.pop("rfid")  # the stand-in extractor: never mistaken for real rFID
    out = Path(cfg.out) if cfg.out else eval_path(cfg.ckpt, "recon", settings)
    shown = images[: int(recon_cfg.grid_images)]
    record["side_by_side"] = str(side_by_side(shown, reconstruct(tokenizer, shown, device), out))
    atomic_write_json(record, out)
    log.info("PSNR %.2f dB, SSIM %.4f -> %s", record["psnr"], record["ssim"], out)
    return out
