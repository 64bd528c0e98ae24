"""Sampler throughput: this project's refinement sampler vs the straightforward reference (tests/reference_grn.py:
one-hot input, naive attention, separate conditional and unconditional passes on every step).

    python bench/sampler.py                       # the issue's setting: GRN_B, 16x16x16 tokens, batch 8, 50 steps
    python bench/sampler.py --batch 2 --steps 6   # a quick CPU run
    python bench/sampler.py --compile             # the fast sampler through torch.compile (sampler.compile=true)

Prints images/s for both, the speed-up, the achieved GFLOP/s of the fast sampler against a matmul peak measured on
the same device, and whether both produced identical labels under the same seed (random weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_grn import reference_sample  # noqa: E402

from grn.lit_modules.generator import sample_labels  # noqa: E402
from grn.models.generator import build_generator  # noqa: E402
from grn.sampling.guidance import guidance_scales  # noqa: E402
from grn.sampling.schedules import keep_probs  # noqa: E402


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="grn_b")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=2.35)
    p.add_argument("--interval", type=float, nargs=2, default=[0.44, 1.0])
    p.add_argument("--temperature", type=float, default=1.31)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (compile time reported apart)")
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_generator(args.size, latent_dim=16, hbq_rounds=4, num_classes=1000, input_size=16).to(device).eval()
    with torch.no_grad():
        for name, prm in net.named_parameters():
            if "adaLN" in name or "final_layer" in name:  # zero-init layers would make the outputs trivial
                prm.normal_(0, 0.02)
    y = torch.arange(args.batch, device=device) * 97 % 1000
    opts = dict(num_steps=args.steps, cfg_scale=args.cfg, cfg_interval=args.interval, temperature=args.temperature)

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 16, 16, 16, dtype=torch.long, device=device), torch.zeros(1, device=device),
            torch.zeros(1, dtype=torch.long, device=device))
    flops_per_pass = counter.get_total_flops()
    ts = keep_probs(args.steps)[: args.steps]
    guided = int((guidance_scales(ts, args.cfg, args.interval) != 1).sum())
    passes = args.batch * (args.steps + guided)  # single-sample forward passes of the fast sampler

    opts["compile"] = args.compile
    # warm-up (and, with --compile, compilation for both batch shapes: conditional only, and cond + uncond)
    _, t_warm = timed(lambda: sample_labels(net, y, torch.Generator(device).manual_seed(0),
                                            **{**opts, "num_steps": 2, "cfg_interval": [0.0, 1.0]}), device)
    if args.compile:
        sample_labels(net, y, torch.Generator(device).manual_seed(0), **{**opts, "num_steps": 2, "cfg_scale": 1.0})
        print(f"warm-up with compilation: {t_warm:.1f} s")
    fast, t_fast = timed(lambda: sample_labels(net, y, torch.Generator(device).manual_seed(0), **opts).labels, device)
    peak = matmul_peak(device, torch.float32)
    print(f"device {device}, {args.size}, batch {args.batch}, {args.steps} steps ({guided} guided), fp32"
          + (", compiled" if args.compile else ""))
    print(f"fast sampler:      {args.batch / t_fast:8.3f} images/s  ({t_fast:.1f} s)")
    achieved = flops_per_pass * passes / t_fast / 1e9
    print(f"achieved:          {achieved:8.1f} GFLOP/s = {achieved / peak:.2f} x the measured fp32 matmul peak "
          f"({peak:.0f} GFLOP/s)")
    if args.skip_reference:
        return
    ref, t_ref = timed(
        lambda: reference_sample(net, y, args.steps, args.cfg,
                                 tuple(args.interval), args.temperature, torch.Generator(device).manual_seed(0)),
        device,
    )
    print(f"reference sampler: {args.batch / t_ref:8.3f} images/s  ({t_ref:.1f} s)")
    same = (fast == ref).float().mean().item()
    # Same random draws; the two implementations differ only in float rounding (fused vs naive attention), which
    # can flip a near-tie Gumbel argmax and then the trajectory. tests/ checks exact equality on a small model.
    print(f"speed-up:          {t_ref / t_fast:8.2f} x   labels identical: {bool(torch.equal(fast, ref))} "
          f"({same:.1%} of labels equal)")


if __name__ == "__main__":
    main()
