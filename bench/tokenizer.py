"""HBQ tokenizer throughput and peak memory: encode / decode of 256×256 images and a 17-frame 256×256 clip,
and the peak-memory ratio of tiled to untiled decoding of a 1024×1024 image.

    python bench/tokenizer.py                          # tiny config (CPU default: about 40 s on 2 cores)
    python bench/tokenizer.py --device cuda --batch 8 --dtype bf16      # all three configs on a GPU
    python bench/tokenizer.py --configs hbq_image_f16d16 --frames 0 --big 0   # full size, images only, CPU

Configs are the yaml files in conf/model/tokenizer/ (random weights: speed and memory do not depend on them).
Peak memory is the extra memory at the peak of each call, above what was in use before it: CUDA
``max_memory_allocated`` on a GPU; on a CPU the process peak RSS (``VmHWM`` from /proc, reset through
/proc/self/clear_refs after ``malloc_trim``, with glibc's mmap threshold lowered so freed tensors leave the
RSS; else ``getrusage`` ru_maxrss, which only rises), so CPU numbers include allocator slack and are rougher.
Clips are encoded in one pass, then with the official temporal chunking (``temporal_chunk=1``), and decoded
likewise.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from grn.models.tokenizer import HBQTokenizer

CONF = Path(__file__).resolve().parents[1] / "conf" / "model" / "tokenizer"


class PeakMemory:
    """Peak extra memory (MiB) of a block of work on ``device``; ``method`` says how it is measured."""

    def __init__(self, device: torch.device):
        self.device = device
        self._libc = None
        self.method = "cuda max_memory_allocated"
        if device.type != "cuda":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self._libc = ctypes.CDLL("libc.so.6")
                # Serve every block over 64 KiB by mmap and return freed memory at once, so RSS follows the
                # live tensors, not glibc's retained heap (M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1).
                self._libc.mallopt(-3, 64 * 1024)
                self._libc.mallopt(-1, 64 * 1024)
                self.method = "peak RSS (VmHWM reset per call; glibc mmap threshold 64 KiB)"
            except OSError:
                self.method = "peak RSS (ru_maxrss delta: rises only, so later numbers under-report)"

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self._libc is not None:
            self._libc.malloc_trim(0)  # hand freed heap back, so the baseline is what is really in use
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self._base = self._status("VmRSS:")
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._libc is not None:
            peak = self._status("VmHWM:")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, peak - self._base) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, mem: PeakMemory, reps: int, warmup: int):
    """(seconds per call, peak extra MiB of one call, last output). The memory-measured call is timed too and
    is the timing when ``reps == 0``; otherwise ``reps`` further calls are averaged."""
    for _ in range(warmup):
        fn()
    mem.start()
    start = time.perf_counter()
    out = fn()
    peak = mem.stop()
    seconds = time.perf_counter() - start
    if reps > 0:
        start = time.perf_counter()
        for _ in range(reps):
            out = fn()
        sync(device)
        seconds = (time.perf_counter() - start) / reps
    return seconds, peak, out


def build(name: str, device: torch.device, dtype: torch.dtype) -> HBQTokenizer:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    torch.manual_seed(0)
    tok = instantiate(cfg, _convert_="all").to(device=device, dtype=dtype).eval()
    return tok


def bench_config(name: str, args, device: torch.device, dtype: torch.dtype, mem: PeakMemory) -> None:
    tok = build(name, device, dtype)
    n_params = sum(p.numel() for p in tok.parameters())
    s, st = tok.spatial_stride, tok.temporal_stride
    print(f"\n== {name}: {n_params / 1e6:.3f} M params, stride {s} (space) × {st} (time), d={tok.latent_dim}")
    g = torch.Generator(device="cpu").manual_seed(0)
    b, size = args.batch, args.size

    def row(what, seconds, peak, count, unit):
        print(
            f"  {what:<34} {count / seconds:10.2f} {unit}/s   {seconds * 1e3:9.1f} ms/call"
            f"   peak +{peak:9.1f} MiB"
        )

    with torch.inference_mode():
        images = (torch.rand(b, 3, size, size, generator=g) * 2 - 1).to(device, dtype)
        sec, peak, f = measure(lambda x=images: tok.encode_features(x), device, mem, args.reps, args.warmup)
        row(f"encode {b}×{size}² image", sec, peak, b, "images")
        sec, peak, _ = measure(lambda z=f: tok.decode(z), device, mem, args.reps, args.warmup)
        row(f"decode {b}×{size}² image", sec, peak, b, "images")
        del images, f

        frames = 1 + max(0, args.frames - 1) // st * st  # the nearest valid length at or below --frames
        clip = (torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1).to(device, dtype)
        for chunk in (None, 1) if frames > 1 else ():
            label = "one pass" if chunk is None else f"chunked {chunk}"
            sec, peak, f = measure(
                lambda x=clip, n=chunk: tok.encode_features(x, temporal_chunk=n),
                device,
                mem,
                args.reps,
                args.warmup,
            )
            row(f"encode {frames}×{size}² clip ({label})", sec, peak, frames, "frames")
            sec, peak, _ = measure(
                lambda z=f, n=chunk: tok.decode(z, temporal_chunk=n), device, mem, args.reps, args.warmup
            )
            row(f"decode {f.shape[2]}→{frames} frames ({label})", sec, peak, frames, "frames")
        del clip

        if args.big:
            lat = args.big // s
            tile, overlap = max(1, args.tile_px // s), args.overlap_px // s
            z = (torch.rand(1, tok.latent_dim, lat, lat, generator=g) * 2 - 1).to(device, dtype)
            # one measured call each (reps=0): memory is the point here
            sec_u, peak_u, full = measure(lambda: tok.decode(z), device, mem, 0, 0)
            full = full.float().cpu()
            sec_t, peak_t, tiled = measure(
                lambda: tok.decode(z, tile_latent=tile, tile_overlap=overlap), device, mem, 0, 0
            )
            diff = (tiled.float().cpu() - full).abs()
            print(
                f"  decode {args.big}² untiled: {sec_u:.2f} s, peak +{peak_u:.1f} MiB;"
                f" tiled ({tile} latents = {tile * s} px, overlap {overlap} latents):"
                f" {sec_t:.2f} s, peak +{peak_t:.1f} MiB"
            )
            print(
                f"  tiled / untiled peak memory = {peak_t / max(peak_u, 1e-9):.3f};"
                f" max |tiled - untiled| = {diff.max().item():.4f}"
                f" (mean {diff.mean().item():.5f}; random weights)"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="conf/model/tokenizer names (default: tiny on CPU, all on CUDA)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--batch", type=int, default=None, help="images per call (default 1 on CPU, 8 on CUDA)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument(
        "--frames", type=int, default=17, help="clip length (1 + 4k for stride-4 configs; 0 skips clips)"
    )
    p.add_argument(
        "--reps", type=int, default=None, help="timed calls after the measured one (default 0 CPU, 5 CUDA)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 0 CPU, 1 CUDA)")
    p.add_argument("--big", type=int, default=1024, help="side of the tiled-vs-untiled decode (0 skips it)")
    p.add_argument("--tile-px", type=int, default=256)
    p.add_argument("--overlap-px", type=int, default=64)
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.configs = args.configs or (["tiny", "hbq_image_f16d16", "hbq_joint_f16t4d64"] if cuda else ["tiny"])
    args.batch = args.batch or (8 if cuda else 1)
    args.reps = args.reps if args.reps is not None else (5 if cuda else 0)
    args.warmup = args.warmup if args.warmup is not None else (1 if cuda else 0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    mem = PeakMemory(device)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {name}, {args.dtype}; peak memory: {mem.method}")
    for config in args.configs:
        bench_config(config, args, device, dtype, mem)


if __name__ == "__main__":
    main()
