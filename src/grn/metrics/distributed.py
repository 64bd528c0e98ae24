"""Evaluation across ranks: join the process group ``torchrun`` describes, sum statistics over ranks, gather the
few images kept for a grid. Every function is a no-op (or the identity) in a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["all_reduce", "gather_grid", "init_distributed"]


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


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (float64 sums stay exact for 50K counts); returns ``t``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


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
