"""What the tiny T2I / T2V models of ``experiment=t2iv_digits`` learned, measured on generated pixels.

    python train.py experiment=t2iv_digits                   # tokenizer, then T2I, then T2V (CPU)
    python scripts/t2iv_digits_eval.py runs/t2iv_digits      # metrics JSON + sample grids in that run directory

* T2I: for each digit, ``--per-caption`` images from "a handwritten <digit>"; the digits classifier (trained on the
  real digits, independent of the generator) reads them: caption-conditional accuracy (chance 0.1).
* T2V: for each digit and direction, clips from "a handwritten <digit> moving <direction>"; the direction is read
  from the ink centroid's motion between the first and the last frame (chance 0.25), the digit by the classifier
  on a 16×16 window around the centroid of the middle frame, scaled to 32×32 (chance 0.1).
* I2V: the same clips generated from the first frame of real held-out clips (the first latent frame held fixed):
  direction accuracy from the caption, and the share of first frames returned bit-identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from grn import hbq
from grn.checkpoints import build_from_config, load_t2iv, load_tokenizer
from grn.datamodules.captioned import DIGIT_WORDS, DIRECTIONS, moving_digits
from grn.io import atomic_write_json
from grn.metrics.digits import load_or_train_classifier, predict
from grn.sampling.text import sample_t2iv

STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def centroids(frames: torch.Tensor) -> torch.Tensor:
    """Ink centroid (x, y) per image: ``[N, S, S]`` in [-1, 1] -> ``[N, 2]``."""
    ink = ((frames + 1) / 2).clamp_min(0)
    coords = torch.arange(frames.shape[-1], dtype=torch.float32)
    mass = ink.sum((-1, -2)).clamp_min(1e-6)
    return torch.stack([(ink.sum(-2) * coords).sum(-1) / mass, (ink.sum(-1) * coords).sum(-1) / mass], -1)


def read_direction(clips: torch.Tensor) -> torch.Tensor:
    """Direction index per clip ``[N, 3, T, S, S]`` from the centroid motion of the grey frames."""
    grey = clips.mean(1)
    move = centroids(grey[:, -1]) - centroids(grey[:, 0])  # [N, 2]
    horizontal = move[:, 0].abs() >= move[:, 1].abs()
    return torch.where(horizontal, torch.where(move[:, 0] < 0, 0, 1), torch.where(move[:, 1] < 0, 2, 3))


def digit_windows(frames: torch.Tensor, window: int = 16, size: int = 32) -> torch.Tensor:
    """A ``window``-px crop around each frame's ink centroid, scaled to ``size``: ``[N, 3, S, S]`` -> same."""
    n, _, s, _ = frames.shape
    c = centroids(frames.mean(1))  # [N, 2] pixel centre of ink
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = window / s
    theta[:, :, 2] = (c + 0.5) * (2.0 / s) - 1.0
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample((frames + 1) / 2, grid, align_corners=False) * 2 - 1


def sample_pixels(net, encode, tok, captions, shape, seed, sampler, first_frame=None):
    g = torch.Generator().manual_seed(seed)
    res = sample_t2iv(net, encode, captions, shape, g, first_frame=first_frame, **sampler)
    feats = hbq.dequantize(res.labels, net.hbq_rounds, "index")
    with torch.no_grad():
        return tok.decode(feats).clamp(-1, 1), res


def load_with_encoder(ckpt: Path):
    """A T2I/T2V checkpoint's network and its caption encoder (a registered grn text encoder) as ``encode``."""
    net, hp = load_t2iv(ckpt)
    enc = build_from_config(hp["text_encoder"], {"text_encoder"}, ckpt, "hyper_parameters.text_encoder")
    return net, lambda caps: [f.float() for f in enc.encode_texts(caps)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--per-caption", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=5, help="clip length (1 + 4k), as the data config")
    p.add_argument("--digit-size", type=int, default=24, help="digit side in the clips, as the data config")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/grn"))
    args = p.parse_args()
    if not args.run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {args.run_dir} (of train.py experiment=t2iv_digits)")
    started = time.time()
    sampler = dict(num_steps=args.steps, schedule="cosine", cfg_scale=args.cfg, temperature=args.temperature)
    tok = load_tokenizer(args.run_dir / "tokenizer" / "checkpoints" / "last.ckpt")
    clf, clf_acc = load_or_train_classifier(args.cache_dir / "digits_classifier.pt")  # trains once if missing
    torch.set_grad_enabled(False)
    out: dict = {"settings": {**sampler, "per_caption": args.per_caption, "seed": args.seed},
                 "classifier_val_accuracy": clf_acc}
    s = tok.spatial_stride

    t2i_ckpt = args.run_dir / "t2i" / "checkpoints" / "last.ckpt"
    if t2i_ckpt.is_file():
        net, encode = load_with_encoder(t2i_ckpt)
        classes = torch.arange(10).repeat_interleave(args.per_caption)
        captions = [f"a handwritten {DIGIT_WORDS[c]}" for c in classes.tolist()]
        images, _ = sample_pixels(net, encode, tok, captions, (net.label_channels, 32 // s, 32 // s), args.seed,
                                  sampler)
        pred = predict(clf, images)
        out["t2i"] = {"caption_accuracy": (pred == classes).float().mean().item(),
                      "per_digit": [(pred[classes == c] == c).float().mean().item() for c in range(10)]}
        save_image((images[:: max(1, args.per_caption // 5)] + 1) / 2, args.run_dir / "t2i_samples.png",
                   nrow=10 if args.per_caption >= 5 else args.per_caption)
        print(f"T2I caption-conditional accuracy {out['t2i']['caption_accuracy']:.3f}")

    t2v_ckpt = args.run_dir / "t2v" / "checkpoints" / "last.ckpt"
    if t2v_ckpt.is_file():
        net, encode = load_with_encoder(t2v_ckpt)
        frames = args.frames
        lat_t = 1 + (frames - 1) // tok.temporal_stride
        combos = [(d, k) for d in range(10) for k in range(4)]
        n_each = max(1, args.per_caption // 4)
        digits = torch.tensor([d for d, _ in combos]).repeat_interleave(n_each)
        dirs = torch.tensor([k for _, k in combos]).repeat_interleave(n_each)
        captions = [f"a handwritten {DIGIT_WORDS[d]} moving {DIRECTIONS[k]}" for d, k in zip(digits.tolist(),
                                                                                             dirs.tolist())]
        shape = (net.label_channels, lat_t, 32 // s, 32 // s)
        clips, _ = sample_pixels(net, encode, tok, captions, shape, args.seed, sampler)
        got_dir = read_direction(clips)
        got_digit = predict(clf, digit_windows(clips[:, :, frames // 2], window=args.digit_size))
        out["t2v"] = {"direction_accuracy": (got_dir == dirs).float().mean().item(),
                      "digit_accuracy": (got_digit == digits).float().mean().item(), "clips": len(captions)}
        print(f"T2V direction accuracy {out['t2v']['direction_accuracy']:.3f}, "
              f"digit accuracy {out['t2v']['digit_accuracy']:.3f}")
        pick = torch.arange(0, len(captions), n_each * 4)[:10]  # one clip per digit
        save_image((clips[pick].permute(0, 2, 1, 3, 4).reshape(-1, 3, 32, 32) + 1) / 2,
                   args.run_dir / "t2v_samples.png", nrow=frames)
        # image-to-video: real held-out first frames, new captions for their direction
        real, real_digits, real_dirs, _ = moving_digits("val", frames=frames, digit_size=args.digit_size)
        real, real_digits, real_dirs = real[:40], real_digits[:40], real_dirs[:40]
        first = tok.encode(real[:, :, :1], target="index")  # [B, d, 1, h, w] latent frame 0
        first_net = hbq.index_labels_to_bit_labels(first, net.hbq_rounds) if net.target == "bits" else first
        caps = [f"a handwritten {DIGIT_WORDS[d]} moving {DIRECTIONS[k]}" for d, k in zip(real_digits.tolist(),
                                                                                         real_dirs.tolist())]
        i2v, res = sample_pixels(net, encode, tok, caps, shape, args.seed, sampler, first_frame=first_net[:, :, 0])
        kept = (res.labels[:, :, :1] == first).flatten(1).all(1).float().mean().item()
        out["i2v"] = {"direction_accuracy": (read_direction(i2v) == real_dirs).float().mean().item(),
                      "first_frame_labels_identical": kept, "clips": len(caps)}
        print(f"I2V direction accuracy {out['i2v']['direction_accuracy']:.3f}, first frame kept {kept:.3f}")
        save_image((i2v[:5].permute(0, 2, 1, 3, 4).reshape(-1, 3, 32, 32) + 1) / 2, args.run_dir / "i2v_samples.png",
                   nrow=frames)
    if len(out) == 2:
        sys.exit(f"no t2i/t2v checkpoints under {args.run_dir} (train with experiment=t2iv_digits first)")
    out["seconds"] = round(time.time() - started, 1)
    atomic_write_json(out, args.run_dir / "t2iv_metrics.json")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
