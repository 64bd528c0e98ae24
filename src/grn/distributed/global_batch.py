"""The global batch and what each rank does with it: ``global = world_size × micro_batch × accumulation``.

A config states the global batch (``stages.<stage>.global_batch_size``, what the learning-rate rule
``blr × global / 256`` and the paper's recipes are written in) and the largest micro-batch one device holds
(the stage's ``datamodule.batch_size``). The per-rank micro-batch and the gradient accumulation are derived from
the world size at launch, so the same experiment trains the same recipe on 1, 2 or 8 GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def split_global_batch(global_batch: int, world_size: int, max_micro_batch: int) -> tuple[int, int]:
    """``(micro_batch, accumulation)`` with ``world_size · micro_batch · accumulation == global_batch``,
    ``micro_batch <= max_micro_batch`` and the fewest accumulation steps; a one-line ValueError where no exact
    split exists."""
    for name, value in (("global batch", global_batch), ("world size", world_size),
                        ("largest micro-batch", max_micro_batch)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    global_batch, world_size, max_micro_batch = int(global_batch), int(world_size), int(max_micro_batch)
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} does not split over {world_size} ranks")
    per_rank = global_batch // world_size
    for accumulation in range(1, per_rank + 1):
        if per_rank % accumulation == 0 and per_rank // accumulation <= max_micro_batch:
            return per_rank // accumulation, accumulation
    raise AssertionError("unreachable: accumulation = per_rank gives micro-batch 1")


def world_size(trainer: Mapping[str, Any], cuda_devices: int = 0) -> int:
    """Ranks a trainer config launches: ``devices`` (an int, a list of ids, or ``auto``/-1: every visible GPU, or
    one process on CPU) × ``num_nodes``."""
    devices = trainer.get("devices", "auto")
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        per_node = len(devices)
    elif devices in ("auto", -1, "-1"):
        on_cpu = trainer.get("accelerator") == "cpu" or not cuda_devices
        per_node = 1 if on_cpu else cuda_devices
    else:
        per_node = int(devices)
    return per_node * int(trainer.get("num_nodes", 1) or 1)
