"""Sampler throughput: this project's refinement sampler vs the straightforward reference (tests/reference_grn.py:
one-hot input, naive attention, separate conditional and unconditional passes on every step).

    python bench/sampler.py                       # the issue's setting: GRN_B, 16x16x16 tokens, batch 8, 50 steps
    python bench/sampler.py --batch 2 --steps 6   # a quick CPU run
    python bench/sampler.py --compile             # the fast sampler through torch.compile (sampler.compile=true)
    python bench/sampler.py --precision compare --skip-reference   # fp32 vs bf16 autocast (sampler.precision)

Prints images/s for both, the speed-up, the achieved GFLOP/s of the fast sampler against a matmul peak measured on
the same device, and whether both produced identical labels under the same seed (random weights). With
``--precision compare`` the fast sampler runs in fp32 and under bf16 autocast and the fp32 / bf16 time ratio is
printed; ``--json PATH`` also writes every figure to a file (scripts/gpu_check.sh reads it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _util import matmul_peak, timed, write_json  # noqa: E402
from reference_grn import reference_sample  # noqa: E402

from grn.sampling.entry import sample_labels  # noqa: E402
from grn.models.generator import build_generator  # noqa: E402
from grn.precision import resolve_precision  # noqa: E402
from grn.sampling.guidance import guidance_scales  # noqa: E402
from grn.sampling.schedules import keep_probs  # noqa: E402


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
    p.add_argument("--precision", choices=("fp32", "bf16", "auto", "compare"), default="fp32",
                   help="sampler.precision of the fast sampler; compare: fp32 and bf16, and their time ratio")
    p.add_argument("--peak-n", type=int, default=2048, help="side of the matmul that measures the fp32 peak")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per precision, taking turns (median)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_generator(args.size, latent_dim=16, hbq_rounds=4, num_classes=1000, input_size=16).to(device).eval()
    with torch.no_grad():
        for name, prm in net.named_parameters():
            if "adaLN" in name or "final_layer" in name:  # zero-init layers would make the outputs trivial
                prm.normal_(0, 0.02)
    y = torch.arange(args.batch, device=device) * 97 % 1000
    opts = dict(num_steps=args.steps, cfg_scale=args.cfg, cfg_interval=args.interval, temperature=args.temperature,
                compile=args.compile)

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 16, 16, 16, dtype=torch.long, device=device), torch.zeros(1, device=device),
            torch.zeros(1, dtype=torch.long, device=device))
    flops_per_pass = counter.get_total_flops()
    ts = keep_probs(args.steps)[: args.steps]
    guided = int((guidance_scales(ts, args.cfg, args.interval) != 1).sum())
    passes = args.batch * (args.steps + guided)  # single-sample forward passes of the fast sampler

    def run(precision: str, **over) -> torch.Tensor:
        return sample_labels(net, y, torch.Generator(device).manual_seed(0), precision=precision,
                             **{**opts, **over}).labels

    precisions = ["fp32", "bf16"] if args.precision == "compare" else [resolve_precision(args.precision, device)]
    peak = matmul_peak(device, torch.float32, n=args.peak_n)
    record = {"device": str(device), "size": args.size, "batch": args.batch, "steps": args.steps, "guided": guided,
              "compile": args.compile, "flops_per_pass": flops_per_pass, "fp32_matmul_gflops": peak, "fast": {}}
    print(f"device {device}, {args.size}, batch {args.batch}, {args.steps} steps ({guided} guided)"
          + (", compiled" if args.compile else ""))
    labels, times = {}, {prec: [] for prec in precisions}
    for precision in precisions:
        # warm-up (and, with --compile, compilation for both batch shapes: conditional only, and cond + uncond)
        _, t_warm = timed(lambda: run(precision, num_steps=2, cfg_interval=[0.0, 1.0]), device)
        if args.compile:
            run(precision, num_steps=2, cfg_scale=1.0)
            print(f"warm-up with compilation ({precision}): {t_warm:.1f} s")
    # the precisions take turns and the median run counts (a shared machine's load then hits both alike)
    for _ in range(args.repeats):
        for precision in precisions:
            labels[precision], seconds = timed(lambda: run(precision), device)
            times[precision].append(seconds)
    for precision in precisions:
        seconds = statistics.median(times[precision])
        achieved = flops_per_pass * passes / seconds / 1e9
        record["fast"][precision] = {"seconds": seconds, "seconds_all": times[precision],
                                     "images_per_s": args.batch / seconds, "gflops": achieved}
        print(f"fast sampler {precision}: {args.batch / seconds:8.3f} images/s  ({seconds:.1f} s), "
              f"{achieved:.1f} GFLOP/s = {achieved / peak:.2f} x the measured fp32 matmul peak ({peak:.0f} GFLOP/s)")
    if len(precisions) == 2:
        ratio = record["fast"]["fp32"]["seconds"] / record["fast"]["bf16"]["seconds"]
        # bf16 rounding moves the logits, so near-tie Gumbel draws flip and the trajectories part: the share of
        # equal labels says how far, not whether bf16 is right (docs/sampler.md#precision measures quality)
        same = (labels["fp32"] == labels["bf16"]).float().mean().item()
        record.update(bf16_speedup=ratio, bf16_labels_equal_share=same)
        print(f"fp32 / bf16 time: {ratio:8.2f} x   ({same:.1%} of labels equal between the two)")
    if not args.skip_reference:
        ref, t_ref = timed(
            lambda: reference_sample(net, y, args.steps, args.cfg, tuple(args.interval), args.temperature,
                                     torch.Generator(device).manual_seed(0)),
            device,
        )
        fast = labels[precisions[0]]
        t_fast = record["fast"][precisions[0]]["seconds"]
        # Same random draws; the two implementations differ only in float rounding (fused vs naive attention), which
        # can flip a near-tie Gumbel argmax and then the trajectory. tests/ checks exact equality on a small model.
        same = (fast == ref).float().mean().item()
        record["reference"] = {"seconds": t_ref, "images_per_s": args.batch / t_ref, "speedup": t_ref / t_fast,
                               "compared_precision": precisions[0], "labels_identical": bool(torch.equal(fast, ref)),
                               "labels_equal_share": same}
        print(f"reference sampler: {args.batch / t_ref:8.3f} images/s  ({t_ref:.1f} s)")
        print(f"speed-up ({precisions[0]}): {t_ref / t_fast:8.2f} x   labels identical: {bool(torch.equal(fast, ref))} "
              f"({same:.1%} of labels equal)")
    write_json(record, args.json)


if __name__ == "__main__":
    main()
