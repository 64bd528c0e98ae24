"""Generator training-step time, fp32 vs bf16 autocast, and MFU: the step of GeneratorLitModule (the GRN objective:
labels mixed with noise at a logit-normal keep-probability, cross-entropy on every token) + backward + gradient
clipping + AdamW, on random token maps of the ImageNet-256 shape (GRN_ind over d = 16, M = 4, 16 x 16 tokens).

    python bench/train_step.py                                   # GRN_B, batch 128 (conf/experiment/c2i_grn_b_in256)
    python bench/train_step.py --size small --batch 8 --steps 3  # a quick CPU run
    python bench/train_step.py --precision bf16 --json step.json

Prints the median ms per step (the precisions take turns step by step), samples/s and tokens/s for each precision
and the fp32 / bf16 time ratio. MFU is
``6 · params · tokens/s / peak``, with params the trainable parameters of the network, tokens the h·w latent
positions of each map (the 32 in-context class tokens and attention's own FLOPs are not counted, the usual 6N
convention), and peak the GPU's dense bf16 peak (bench/_util.py; null for a GPU not in the table and on CPU).
It is given for the bf16 step only: an fp32 step does not run on the bf16 tensor cores that the peak counts. The
FLOPs a counter sees in one step (``torch.utils.flop_counter``: matmuls and attention) are reported beside it.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from _util import peak_bf16_flops, timed, write_json

from grn.lit_modules.generator import GeneratorLitModule
from grn.precision import autocast, resolve_precision


def make_step(module: GeneratorLitModule, batch: dict, precision: str, device: torch.device):
    """One optimiser step of ``module`` on ``batch`` under ``precision`` -> the loss (a float tensor)."""
    opt = torch.optim.AdamW(module.net.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")

    def step() -> torch.Tensor:
        with autocast(precision, device):  # forward and loss; backward runs outside, as Lightning's bf16-mixed
            loss = module.objective(batch)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="grn_b")
    p.add_argument("--batch", type=int, default=128, help="per device (c2i_grn_b_in256: 128 per GPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per precision (taking turns; median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, kernels, compile)")
    p.add_argument("--input-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto", "compare"), default="compare")
    p.add_argument("--compile", action="store_true", help="torch.compile the network first")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    net = {"_target_": "grn.models.generator.build_generator", "size": args.size, "latent_dim": 16,
           "hbq_rounds": 4, "num_classes": 1000, "input_size": args.input_size}
    hw = args.input_size**2
    tokens_per_step = args.batch * hw
    g = torch.Generator().manual_seed(0)
    batch = {"tokens": torch.randint(0, 16, (args.batch, 16, args.input_size, args.input_size), generator=g),
             "label": torch.randint(0, 1000, (args.batch,), generator=g)}
    batch = {k: v.to(device) for k, v in batch.items()}
    gpu_name, peak = peak_bf16_flops(device)
    precisions = ["fp32", "bf16"] if args.precision == "compare" else [resolve_precision(args.precision, device)]
    record = {"device": str(device), "gpu_name": gpu_name, "peak_bf16_flops": peak, "size": args.size,
              "batch": args.batch, "tokens_per_step": tokens_per_step, "steps": args.steps, "compile": args.compile,
              "precision": {}}
    print(f"device {device}{f' ({gpu_name})' if gpu_name else ''}, {args.size}, batch {args.batch}, "
          f"{tokens_per_step} tokens per step, {args.steps} timed steps")
    steps, counted = {}, {}
    for precision in precisions:
        torch.manual_seed(0)  # the same initial weights for every precision
        module = GeneratorLitModule(net=net, label_drop_prob=0.1).to(device).train()
        record["params"] = sum(prm.numel() for prm in module.net.parameters() if prm.requires_grad)
        if args.compile:
            module.net.compile()
        steps[precision] = make_step(module, batch, precision, device)
        for _ in range(args.warmup):
            steps[precision]()
        with FlopCounterMode(display=False) as counter:
            steps[precision]()
        counted[precision] = counter.get_total_flops()
    # the precisions take turns, one step each, and the median step counts: a load that comes and goes on a shared
    # machine then hits both alike, and a stall does not move a median
    times: dict[str, list[float]] = {prec: [] for prec in precisions}
    losses: dict[str, list[float]] = {prec: [] for prec in precisions}
    for _ in range(args.steps):
        for precision in precisions:
            loss, seconds = timed(steps[precision], device)
            times[precision].append(seconds)
            losses[precision].append(float(loss))
    model_flops = 6 * record["params"] * tokens_per_step
    for precision in precisions:
        per_step = statistics.median(times[precision])
        achieved = model_flops / per_step
        mfu = achieved / peak if peak and precision == "bf16" else None
        record["precision"][precision] = {
            "step_seconds": per_step, "step_seconds_all": times[precision], "samples_per_s": args.batch / per_step,
            "tokens_per_s": tokens_per_step / per_step, "model_flops_per_step": model_flops,
            "counted_flops_per_step": counted[precision], "achieved_flops": achieved, "mfu": mfu,
            "losses": losses[precision], "losses_finite": all(math.isfinite(v) for v in losses[precision]),
        }
        print(f"{precision}: {per_step * 1e3:9.1f} ms/step (median)  {args.batch / per_step:9.1f} samples/s  "
              f"{tokens_per_step / per_step:11.0f} tokens/s  {achieved / 1e12:7.3f} TFLOP/s (6N)"
              + (f"  MFU {mfu:.3f}" if mfu is not None else ""))
    if len(precisions) == 2:
        ratio = record["precision"]["fp32"]["step_seconds"] / record["precision"]["bf16"]["step_seconds"]
        record["bf16_speedup"] = ratio
        print(f"fp32 / bf16 step time: {ratio:.2f} x")
    record["mfu"] = record["precision"].get("bf16", {}).get("mfu")
    write_json(record, args.json)


if __name__ == "__main__":
    main()
