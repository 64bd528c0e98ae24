"""One rank of the distributed protocol test: ``python protocol_worker.py RANK WORLD PORT OUT``.

The rank joins the group through :func:`grn.metrics.distributed.init_distributed` (the ``torchrun`` environment),
takes its share of :func:`grn.metrics.protocol.balanced_batches`, sums per-class counts with ``all_reduce`` and
gathers a few "images" (their global index as the value) per class with ``gather_grid``; rank 0 writes JSON.
"""

import json
import os
import sys

import torch

from grn.metrics.distributed import all_reduce, gather_grid, init_distributed
from grn.metrics.protocol import balanced_batches

NUM_CLASSES, PER_CLASS, BATCH, KEEP = 10, 3, 4, 2


def share(rank: int, world: int) -> dict:
    """This rank's batches, the all-reduced per-class counts and the gathered kept indices, sorted by class."""
    counts = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    kept, kept_classes, batches = [], [], []
    for b, index in balanced_batches(NUM_CLASSES, PER_CLASS, BATCH, rank, world):
        classes = index // PER_CLASS
        batches.append(b)
        counts.index_add_(0, classes, torch.ones(len(index), dtype=torch.float64))
        take = (index % PER_CLASS) < KEEP  # the first KEEP images of each class, whichever rank made them
        kept.append(index[take].float().view(-1, 1, 1, 1))
        kept_classes.append(classes[take])
    all_reduce(counts)
    images, classes = gather_grid(kept, kept_classes, world)
    return {"batches": batches, "counts": counts.tolist(), "images": images.flatten().tolist(),
            "classes": classes.tolist()}


if __name__ == "__main__":
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=port)
    got_rank, got_world, device = init_distributed("cpu")
    assert (got_rank, got_world, device) == (rank, world, "cpu"), (got_rank, got_world, device)
    result = share(rank, world)
    parts = [None] * world
    torch.distributed.all_gather_object(parts, result["batches"])
    result["batches_by_rank"] = parts
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    torch.distributed.destroy_process_group()
