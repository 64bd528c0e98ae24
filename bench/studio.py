"""The studio's calls timed without the page: a 10-image class grid, one revision, the step-by-step view.

    python bench/studio.py                  # the quickstart checkpoint if trained
    python bench/studio.py --ckpt runs/quickstart/c2i/checkpoints/last.ckpt --repeats 5 --threads 1

Runs the same code the page runs (grn.studio.engine.Studio) at the checkpoint's own decoding settings and at
50 steps, and prints the median wall time of each call over ``--repeats`` runs, with seconds per image.
Without a trained quickstart it times tiny untrained checkpoints of the same architecture (the default tiny
configs, which the quickstart trains), so the times hold; only complexity-aware step counts depend on
training.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "runs" / "quickstart" / "c2i" / "checkpoints" / "last.ckpt"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, first-call overheads)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="a class-to-image checkpoint (default: the quickstart's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from grn.studio.engine import Studio

    ckpt = args.ckpt or (str(QUICKSTART) if QUICKSTART.is_file() else None)
    if ckpt is None:
        sys.path.insert(0, str(ROOT / "tests" / "entrypoints"))
        from eval_fixtures import make_checkpoints

        ckpt = str(make_checkpoints(Path(tempfile.mkdtemp(prefix="grn-bench-studio-")))[0])
        print("no trained quickstart: timing tiny untrained checkpoints of the same architecture")
    studio = Studio.load(ckpt)
    print(
        f"checkpoint {ckpt}; torch threads {torch.get_num_threads()}, cores {os.cpu_count()}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    mask = np.zeros(studio.image_size, bool)
    mask[: studio.image_size[0] // 2, : studio.image_size[1] // 2] = True  # a quarter of the image
    settings = (
        ("checkpoint's decoding", studio.defaults),
        ("50 steps", studio.defaults.replace(num_steps=50)),
    )
    for name, cfg in settings:
        source = studio.generate([7], 0, cfg).pictures[0]
        grid = median_time(lambda: studio.generate(list(range(10)), 0, cfg), args.repeats)
        one = median_time(lambda: studio.generate([3], 0, cfg), args.repeats)
        rev = median_time(lambda: studio.revise(source, mask, 1, cls=1, cfg=cfg), args.repeats)
        live = median_time(lambda: list(studio.live(0, cls=2, cfg=cfg)), args.repeats)
        print(
            f"{name} ({cfg.num_steps} steps, cfg {cfg.cfg_scale} on {list(cfg.cfg_interval)}, tau "
            f"{cfg.temperature}): 10-image grid {grid:.2f} s ({grid / 10:.3f} s/image), one image "
            f"{one:.2f} s, one revision (a quarter) {rev:.2f} s, step-by-step view of one sample {live:.2f} s"
        )


if __name__ == "__main__":
    main()
