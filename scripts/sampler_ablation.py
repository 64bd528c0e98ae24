"""Sampler ablations on digits, on the paper's Tab. 7 / 10 / 11 protocol — every number from the independent digits
classifier (conditional accuracy) and its features (digits-FID / digits-IS, `grn-digits`).

    python scripts/sampler_ablation.py --ind runs/quickstart/c2i/checkpoints/last.ckpt \\
        --bit runs/quickstart-bit/c2i/checkpoints/last.ckpt --results docs/sampler_ablation.jsonl

Parts (``sweep`` and ``best`` always run, since the others start from their winners; each result is appended to ``--results`` as one JSON line and skipped when the file already holds it, so an
interrupted run continues where it stopped):

1. ``sweep``: refine and the mask-based baseline each get the same budget, one grid over guidance scale, interval
   start and temperature (``--sweep-per-class`` images per class, ``--steps`` steps);
2. ``best``: both samplers at both grid winners (500 images): each at its own best, and each at the other's
   (identical decoding parameters); the better of the two at 500 images is each sampler's best from here on;
3. ``selection``: random vs confidence selection at refine's best (Tab. 10);
4. ``steps``: 10 / 30 / 50 steps for both samplers at their own best;
5. ``complexity``: complexity-aware sampling at refine's best decoding: our Eq. 9 reading and the released C2I
   variant (official update §E) — the released constants and k, b calibrated on this model (Tab. 11);
6. ``bit``: GRN_bit with refine and mask-based at refine-ind's best, and complexity-aware;
7. ``training``: other trainings of the same network (``--variant NAME=CKPT``, e.g. more steps or another
   keep-probability distribution), refine and mask-based each at its own best decoding from the sweep;
8. ``revision``: why refine and mask-based differ — for each GRN_ind training, along refine's trajectory (100
   samples at refine's best decoding), the share of input tokens that are earlier predictions and the mean
   probability the conditional prediction gives to *changing* such a token (1 − p(input value)): how much of what
   was already drawn each step re-draws differently; and the mean probability it gives to *keeping* a noise token's
   value (the network cannot tell noise from real tokens except by context, so this is the noise that leaks into
   the sample).

Calibration maps the 10th / 90th percentile of the decision entropies of 100 samples onto the step range.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from grn.entrypoints.common import CONF_DIR
from grn.metrics.c2i import evaluate
from grn.pipeline import GRNPipeline

PARTS = ("sweep", "best", "selection", "steps", "complexity", "bit", "training", "revision")


def grid(steps: int) -> list[dict]:
    points = []
    for cfg, lo, tau in itertools.product((1.0, 2.0, 3.0), (0.0, 0.4), (0.9, 1.2)):
        if cfg == 1.0 and lo > 0:
            continue  # no guidance: the interval does not matter
        points.append({"num_steps": steps, "cfg_scale": cfg, "cfg_interval": [lo, 1.0], "temperature": tau})
    return points


class Runner:
    def __init__(self, results: Path, seed: int):
        self.path, self.seed = results, seed
        self.rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
        self.pipes: dict[str, GRNPipeline] = {}
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            self.eval_cfg = compose("eval", overrides=["ckpt=unused"]).eval

    def pipe(self, ckpt: str) -> GRNPipeline:
        if ckpt not in self.pipes:
            self.pipes[ckpt] = GRNPipeline.from_checkpoint(ckpt)
        return self.pipes[ckpt]

    def find(self, part: str, model: str, sampler: dict, per_class: int) -> dict | None:
        for r in self.rows:
            if r["part"] == part and r["model"] == model and r["sampler"] == sampler and r["per_class"] == per_class:
                return r
        return None

    def run(self, part: str, model: str, ckpt: str, label: str, sampler: dict, per_class: int) -> dict:
        hit = self.find(part, model, sampler, per_class)
        if hit is not None:
            return hit
        cfg = self.eval_cfg.copy()
        cfg.num_per_class = per_class
        start = time.perf_counter()
        m, _, _ = evaluate(self.pipe(ckpt), cfg, sampler, self.seed)
        row = {"part": part, "model": model, "label": label, "sampler": sampler, "per_class": per_class,
               "accuracy": m["conditional_accuracy"], "digits_fid": m["digits_fid"],
               "digits_is": m["digits_inception_score"], "mean_steps": m["mean_steps"],
               "passes": m["network_passes_per_image"], "seconds": round(time.perf_counter() - start, 1)}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        return row

    def revision(self, model: str, ckpt: str, sampler: dict, per_class: int = 10) -> dict:
        """The revision profile of refine's trajectory (see part 8); cached like :meth:`run`."""
        hit = self.find("revision", model, sampler, per_class)
        if hit is not None:
            return hit
        pipe = self.pipe(ckpt)
        classes = torch.arange(pipe.generator.num_classes).repeat_interleave(per_class)
        n, state, profile = len(classes), {}, []

        def hook(module, args, out):
            z, t = args[0][:n], args[1][:n]  # the conditional rows (every sample is active: fixed steps)
            noise = state.setdefault("noise", z.clone())  # step 0 sees the initial noise map only
            drawn = z != noise
            p_same = out[:n].float().softmax(1).gather(1, z.unsqueeze(1)).squeeze(1)
            change = float((1 - p_same)[drawn].mean()) if drawn.any() else 0.0
            copy_noise = float(p_same[~drawn].mean()) if (~drawn).any() else 0.0
            profile.append([round(float(t[0]), 4), round(float(drawn.float().mean()), 4), round(change, 4),
                            round(copy_noise, 4)])

        handle = pipe.generator.register_forward_hook(hook)
        try:
            pipe(classes, seed=self.seed + 200, **sampler)
        finally:
            handle.remove()
        row = {"part": "revision", "model": model, "label": "refine", "sampler": sampler, "per_class": per_class,
               "profile": profile}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        return row

    def calibrate(self, ckpt: str, base: dict, official: bool, lo_steps: int, hi_steps: int) -> tuple[float, float]:
        """k, b mapping the 10th / 90th percentile decision entropy to ``lo_steps`` / ``hi_steps`` (our reading:
        total steps T; official: post-warm-up steps D)."""
        classes = torch.arange(10).repeat_interleave(10)
        probe = {**base, "k": 0.0, "b": float(hi_steps)}
        if official:
            probe.update(schedule="complexity_aware_official", complexity_min_steps=lo_steps + 5)
        else:
            probe.update(schedule="complexity_aware", complexity_min_steps=lo_steps, complexity_max_steps=hi_steps, alpha=hi_steps)
        h = self.pipe(ckpt)(classes, seed=self.seed + 100, **probe).stats["warmup_entropy"].double()
        q10, q90 = torch.quantile(h, 0.1).item(), torch.quantile(h, 0.9).item()
        k = (hi_steps - lo_steps) / max(q90 - q10, 1e-6)
        return round(k, 1), round(lo_steps - k * q10, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ind", required=True, help="GRN_ind generator checkpoint")
    p.add_argument("--bit", help="GRN_bit generator checkpoint (same tokenizer)")
    p.add_argument("--results", default="docs/sampler_ablation.jsonl")
    p.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--sweep-per-class", type=int, default=20)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=CKPT",
                   help="another training of the GRN_ind network for the `training` part (repeatable)")
    args = p.parse_args()
    r = Runner(Path(args.results), args.seed)
    n, ns = args.per_class, args.sweep_per_class

    samplers = {"refine": {}, "mask-based": {"revise": False}}
    best: dict[str, dict] = {}
    for name, extra in samplers.items():
        rows = [r.run("sweep", "GRN_ind", args.ind, name, {**pt, **extra}, ns) for pt in grid(args.steps)]
        winner = min(rows, key=lambda row: row["digits_fid"])["sampler"]
        best[name] = {k: v for k, v in winner.items() if k != "revise"}
    print("best decoding:", json.dumps(best), flush=True)
    # every later part starts from these winners (cached after the first run)
    candidates = dict(best)
    finals = {name: [] for name in samplers}
    for (name, extra), (owner, setting) in itertools.product(samplers.items(), candidates.items()):
        finals[name].append(r.run("best", "GRN_ind", args.ind, f"{name} at {owner}'s best", {**setting, **extra}, n))
    # a 200-image sweep ranks close settings noisily: the winner among the candidates at full size is the best
    for name, rows in finals.items():
        winner = min(rows, key=lambda row: row["digits_fid"])["sampler"]
        best[name] = {k: v for k, v in winner.items() if k != "revise"}
    print("best decoding at full size:", json.dumps(best), flush=True)
    if "selection" in args.parts:
        r.run("selection", "GRN_ind", args.ind, "confidence", {**best["refine"], "selection": "confidence"}, n)
    if "steps" in args.parts:
        for (name, extra), steps in itertools.product(samplers.items(), (10, 30, 50)):
            r.run("steps", "GRN_ind", args.ind, name, {**best[name], **extra, "num_steps": steps}, n)
    if "complexity" in args.parts:
        base = {**best["refine"], "num_steps": 50}
        for ckpt, model in ((args.ind, "GRN_ind"), (args.bit, "GRN_bit")):
            if not ckpt or (model == "GRN_bit" and "bit" not in args.parts):
                continue
            variants = [("official, released k=700 b=-620 Tmin=20",
                         {"schedule": "complexity_aware_official", "k": 700.0, "b": -620.0, "complexity_min_steps": 20,
                          "complexity_warmup_steps": 5})]
            for lo, hi in ((15, 45), (5, 25)):
                k, b = r.calibrate(ckpt, base, True, lo, hi)
                variants.append((f"official, calibrated D in [{lo}, {hi}] (k={k}, b={b})",
                                 {"schedule": "complexity_aware_official", "k": k, "b": b, "complexity_min_steps": lo + 5,
                                  "complexity_warmup_steps": 5}))
            for lo, hi in ((20, 50), (10, 30)):
                k, b = r.calibrate(ckpt, base, False, lo, hi)
                variants.append((f"ours (Eq. 9 reading), T in [{lo}, {hi}] (k={k}, b={b})",
                                 {"schedule": "complexity_aware", "k": k, "b": b, "complexity_min_steps": lo, "complexity_max_steps": hi,
                                  "alpha": hi, "complexity_warmup_steps": 5}))
            if model == "GRN_bit":
                variants = variants[:2]
            for label, extra in variants:
                r.run("complexity", model, ckpt, label, {**base, **extra}, n)
    if "bit" in args.parts and args.bit:
        for name, extra in samplers.items():
            r.run("bit", "GRN_bit", args.bit, name, {**best["refine"], **extra}, n)
    if "training" in args.parts:
        for spec in args.variant:
            model, _, ckpt = spec.partition("=")
            for name, extra in samplers.items():
                r.run("training", model, ckpt, name, {**best[name], **extra}, n)
    if "revision" in args.parts:
        for spec in ["GRN_ind=" + args.ind, *args.variant]:
            model, _, ckpt = spec.partition("=")
            r.revision(model, ckpt, best["refine"])


if __name__ == "__main__":
    main()
