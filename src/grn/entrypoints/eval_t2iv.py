"""``python eval.py task=t2i|t2v ckpt=<t2i/t2v.ckpt>``: a T2I / T2V model on captioned (moving) digits.

``task=t2i``: caption-conditional accuracy; ``task=t2v``: T2V direction and digit accuracy and the I2V
measurement (direction accuracy, first frames kept). The measuring code is :mod:`grn.metrics.t2iv_digits`; the
settings are ``t2iv`` (counts, clip length, digit size), ``eval.classifier_cache`` (the digits classifier that
reads the samples) and ``sampler``. Writes ``<ckpt dir>/../eval/<task>-<hash>.json`` and the sample grids beside it
(``<stem>.png``; for t2v also ``<stem>-i2v.png``). Runs in one process, on the CPU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("grn.eval")


def run_t2iv(cfg: DictConfig, task: str, sampler: dict[str, Any]) -> Path:
    """Score the T2I (``task="t2i"``) or T2V (``"t2v"``) checkpoint ``cfg.ckpt``; returns the JSON path."""
    import torch

    from grn.checkpoints import load_t2iv, load_tokenizer
    from grn.io import atomic_write_json
    from grn.sampling.text import sample_t2iv
    from grn.metrics import t2iv_digits
    from grn.metrics.digits import load_or_train_classifier
    from grn.metrics.protocol import eval_path, settings_record

    start = time.perf_counter()
    net, hp = load_t2iv(cfg.ckpt, cfg.ema)
    tokenizer_ckpt = cfg.tokenizer_ckpt or hp.get("tokenizer_ckpt")
    if not tokenizer_ckpt:
        raise ValueError(f"{cfg.ckpt} records no tokenizer checkpoint: pass tokenizer_ckpt=<path>")
    encode = t2iv_digits.caption_encoder(hp, cfg.ckpt)
    model = t2iv_digits.TextModel.from_hparams(net, encode, load_tokenizer(tokenizer_ckpt), sample_t2iv, hp)
    classifier, classifier_acc = load_or_train_classifier(cfg.eval.classifier_cache)  # trains once if missing
    opts = cfg.t2iv
    seed = int(cfg.seed)
    with torch.no_grad():
        if task == "t2i":
            metrics, grids = t2iv_digits.evaluate_t2i(model, classifier, int(opts.per_caption), seed, sampler)
        else:
            metrics, grids = t2iv_digits.evaluate_t2v(
                model, classifier, int(opts.per_caption), seed, sampler, frames=int(opts.frames),
                digit_size=int(opts.digit_size), i2v_clips=int(opts.i2v_clips))
    settings = {"task": task, **settings_record(cfg.ckpt, tokenizer_ckpt, cfg.ema, sampler, seed, cfg.eval),
                "t2iv": OmegaConf.to_container(opts, resolve=True)}
    out = Path(cfg.out) if cfg.out else eval_path(cfg.ckpt, task, settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, grid in grids.items():
        files[name] = str(t2iv_digits.save_grid(grid, out.with_name(
            f"{out.stem}.png" if name == task else f"{out.stem}-{name}.png")))
    record = {"classifier_val_accuracy": classifier_acc, **metrics,
              "seconds": round(time.perf_counter() - start, 1), "grids": files, "settings": settings}
    atomic_write_json(record, out)
    for line in t2iv_digits.describe(metrics):
        log.info(line)
    log.info("-> %s", out)
    return out
