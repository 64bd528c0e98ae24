"""Start-up validation: every number the entry points read from their config is checked against its valid range
before any heavy work; a :class:`~grn.entrypoints.errors.ConfigError` names the key, its value and the range.

The sampler keys are checked here once for sample.py, eval.py and train.py (its report and the modules' sampling
callbacks); the choices (schedules, guidance types, selections) and the guidance interval rule come from
:mod:`grn.sampling`. The table of ranges is in docs/errors.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from grn.entrypoints.errors import ConfigError

# train.py counts steps (val_every, LR schedules, step checkpoints, resume), so Lightning's max_steps=-1
# ("until max_epochs") has no meaning here
_STEPS_NOTE = " (Lightning's -1, 'until max_epochs', is not supported: train.py counts steps)"


def _show(value: Any) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return repr(value) if isinstance(value, str) else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return _is_number(value) and float(value).is_integer()


def number(key: str, value: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, integer: bool = False, optional: bool = False, note: str = "") -> None:
    """``value`` (of config key ``key``) must be a number (``integer``: a whole one) within the bounds, or None
    where ``optional``; else ConfigError."""
    if value is None and optional:
        return
    ok = _is_integer(value) if integer else _is_number(value)
    ok = ok and (ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le) and (
        lt is None or value < lt)
    if not ok:
        bounds = [f">= {ge}" if ge is not None else "", f"> {gt}" if gt is not None else "",
                  f"<= {le}" if le is not None else "", f"< {lt}" if lt is not None else ""]
        rule = ("null or " if optional else "") + ("an integer" if integer else "a number")
        rule += (" " + " and ".join(b for b in bounds if b)) if any(bounds) else ""
        raise ConfigError(f"{key}={_show(value)} is invalid: it must be {rule}{note}")


def choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        shown = " | ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"{key}={_show(value)} is invalid: choose one of {shown}")


def _flag(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={_show(value)} is invalid: it must be true or false")


def check_sampler(sampler: Mapping | None, prefix: str = "sampler") -> None:
    """The sampler keys of ``conf/sampler`` (those present), each in range and consistent with the schedule."""
    from grn.precision import PRECISIONS
    from grn.sampling.config import BIT_TARGETS, I2V_CHOICES, SAMPLER_DEFAULTS, unknown_keys
    from grn.sampling.guidance import GUIDANCE_TYPES, check_interval
    from grn.sampling.refine import PT_VALUES
    from grn.sampling.schedules import SCHEDULES
    from grn.sampling.selection import SELECTIONS

    s = dict(sampler or {})
    unknown = unknown_keys(s, prefix)
    if unknown:
        raise ConfigError(unknown)
    default = SAMPLER_DEFAULTS  # the keys and defaults of grn.sampling.config.SamplerConfig

    def key(name: str) -> str:
        return f"{prefix}.{name}"

    ranges = {
        "num_steps": dict(integer=True, ge=1), "keep_prob_shift": dict(gt=0), "cfg_scale": dict(ge=0, note=" (1 = off)"),
        "cfg_power": dict(gt=0), "temperature": dict(ge=0, note=" (0 = argmax)"),
        "complexity_warmup_steps": dict(integer=True, ge=1), "alpha": dict(gt=0), "k": {}, "b": {},
        "complexity_min_steps": dict(integer=True, ge=1), "complexity_max_steps": dict(integer=True, ge=1),
        "seed": dict(integer=True),
    }
    for name, bounds in ranges.items():
        if name in s:
            number(key(name), s[name], **bounds)
    for name, choices in (("schedule", SCHEDULES), ("cfg_type", GUIDANCE_TYPES), ("selection", SELECTIONS),
                          ("bit_target", BIT_TARGETS), ("precision", PRECISIONS), ("pt_value", PT_VALUES),
                          ("i2v_mode", I2V_CHOICES)):
        if name in s:
            choice(key(name), s[name], choices)
    for name in ("revise", "compile"):
        if name in s:
            _flag(key(name), s[name])
    if "cfg_interval" in s:
        interval = s["cfg_interval"]
        pair = OmegaConf.to_container(interval) if OmegaConf.is_config(interval) else interval
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_is_number(v) for v in pair)):
            raise ConfigError(f"{key('cfg_interval')}={_show(interval)} is invalid: it must be [lo, hi] with "
                              "0 <= lo <= hi <= 1")
        try:
            check_interval(pair)
        except ValueError as err:
            raise ConfigError(f"{key('cfg_interval')}={_show(interval)} is invalid: {err}") from None
    schedule = s.get("schedule")
    w, lo, hi, alpha, num_steps = (s.get(name, default[name]) for name in (
        "complexity_warmup_steps", "complexity_min_steps", "complexity_max_steps", "alpha", "num_steps"))
    if schedule == "complexity_aware" and not (w < lo <= hi and w < alpha):
        raise ConfigError(
            f"{prefix}: schedule=complexity_aware needs complexity_warmup_steps < complexity_min_steps <= "
            f"complexity_max_steps and complexity_warmup_steps < alpha, got complexity_warmup_steps={w}, "
            f"complexity_min_steps={lo}, complexity_max_steps={hi}, alpha={alpha}")
    if schedule == "complexity_aware_official" and not w < lo <= num_steps:
        raise ConfigError(
            f"{prefix}: schedule=complexity_aware_official needs complexity_warmup_steps < complexity_min_steps <= "
            f"num_steps, got complexity_warmup_steps={w}, complexity_min_steps={lo}, num_steps={num_steps}")


def check_eval(eval_cfg: Mapping | None, prefix: str = "eval") -> None:
    """The evaluation protocol's counts (``conf/eval``)."""
    e = eval_cfg or {}
    for name, bounds in (("num_per_class", dict(ge=1)), ("batch_size", dict(ge=1)),
                         ("keep_per_class", dict(ge=1)), ("grid_classes", dict(ge=0))):
        if name in e:
            number(f"{prefix}.{name}", e[name], integer=True, **bounds)
    fid = e.get("fid") or {}
    if fid.get("enabled", True):
        for name in ("isc_splits", "batch_size"):
            if name in fid:
                number(f"{prefix}.fid.{name}", fid[name], integer=True, ge=1)
    recon = e.get("recon") or {}
    for name, bounds in (("num_images", dict(ge=1, optional=True)), ("batch_size", dict(ge=1)),
                         ("grid_images", dict(ge=0))):
        if name in recon:
            number(f"{prefix}.recon.{name}", recon[name], integer=True, **bounds)


def check_t2iv(t2iv: Mapping | None, prefix: str = "t2iv") -> None:
    """The captioned-digits counts of ``eval.py task=t2i|t2v`` (``conf/eval.yaml``)."""
    t2iv = t2iv or {}
    for name, bounds in (("per_caption", dict(ge=1)), ("frames", dict(ge=5)), ("digit_size", dict(ge=1, le=31)),
                         ("i2v_clips", dict(ge=1))):
        number(f"{prefix}.{name}", t2iv.get(name), integer=True, **bounds)
    if (int(t2iv["frames"]) - 1) % 4:
        raise ConfigError(f"{prefix}.frames={t2iv['frames']} is invalid: clips have 1 + 4k frames (5, 9, ...)")


# Ranges of the model, data and training-module keys, by leaf name wherever they sit in a stage's config
# (datamodule, lit_module, the networks they build). A name not listed is left to the class that reads it.
_POSITIVE_INT = dict(integer=True, ge=1)
_COUNT = dict(integer=True, ge=0)
_PROB = dict(ge=0, le=1)
LEAF_RANGES: dict[str, dict] = {
    **{name: _POSITIVE_INT for name in (
        "batch_size", "image_size", "crop_size", "short_side", "in_channels", "latent_dim",
        "hbq_rounds", "patch_size", "enc_channels", "dec_channels", "num_res_blocks", "input_size",
        "base_channels", "num_layers", "epoch_samples", "epoch_size", "num_frames",
        "clip_frames", "val_frames", "text_dim", "dim", "depth", "num_heads", "num_kv_heads", "max_length",
        "width", "height", "digit_size", "clips_per_digit", "stride", "max_member_bytes", "max_image_pixels",
        "max_frame_pixels", "val_grid", "token_budget")},
    **{name: _COUNT for name in ("num_workers", "shuffle_buffer", "shuffle_initial", "disc_start", "warmup_steps",
                                 "prefetch_factor")},
    **{name: _PROB for name in ("label_drop_prob", "caption_drop_prob", "short_caption_prob", "val_fraction",
                                "flip_prob", "i2v_ratio", "dense_ratio")},
    "dropout": dict(ge=0, lt=1), "blr": dict(gt=0),
    "lr": dict(gt=0, optional=True, note=" (null: blr x global batch / 256)"),
    "weight_decay": dict(ge=0), "grad_clip": dict(ge=0, optional=True, note=" (null or 0 = no clipping)"),
    "l1_weight": dict(ge=0), "lpips_weight": dict(ge=0), "gan_weight": dict(ge=0), "disc_weight": dict(ge=0),
    "keep_prob_mean": {}, "keep_prob_std": {}, "keep_prob_shift": dict(gt=0), "fps": dict(gt=0),
    "max_aspect_ratio": dict(ge=1), "min_duration": dict(ge=0),
    "num_classes": dict(integer=True, ge=1, optional=True, note=" (null: a text model)"),
}
# keys with a fixed set of values (the T2I/T2V network's image-to-video form)
LEAF_CHOICES: dict[str, tuple] = {"i2v_mode": ("first_frame", "region")}
# lists whose every entry has a range
LIST_RANGES: dict[str, dict] = {"ema_decays": _PROB, "betas": dict(ge=0, lt=1), "channel_mult": _POSITIVE_INT}
# checked on their own (check_sampler, check_eval), and not part of what a stage builds
_SKIP = {"sampler", "eval", "_target_"}


def check_numbers(section: Any, prefix: str) -> None:
    """Every key of ``section`` (a stage's datamodule / lit_module / network config, walked recursively) whose name
    is in :data:`LEAF_RANGES` or :data:`LIST_RANGES` is in its range; ``dim`` is a multiple of ``num_heads`` where a
    config sets both. Only the listed keys are read, so path interpolations elsewhere are never resolved."""
    if not OmegaConf.is_dict(section) and not isinstance(section, Mapping):
        return
    for name in section.keys():
        name = str(name)
        if name in _SKIP:
            continue
        key = f"{prefix}.{name}"
        if name in LEAF_RANGES:
            number(key, section[name], **LEAF_RANGES[name])
        elif name in LEAF_CHOICES:
            choice(key, section[name], LEAF_CHOICES[name])
        elif name in LIST_RANGES:
            values = section[name]
            if values is None:
                continue
            if not (OmegaConf.is_list(values) or isinstance(values, (list, tuple))):
                raise ConfigError(f"{key}={_show(values)} is invalid: it must be a list")
            for i, value in enumerate(values):
                number(f"{key}[{i}]", value, **LIST_RANGES[name])
        else:
            try:
                value = section[name]
            except OmegaConfBaseException:  # e.g. ${hydra:...} outside a Hydra run: a path, never a number config
                continue
            if OmegaConf.is_dict(value) or isinstance(value, Mapping):
                check_numbers(value, key)
    dim, heads = section.get("dim"), section.get("num_heads")
    if dim is not None and heads is not None and int(dim) % int(heads):
        raise ConfigError(f"{prefix}.dim={dim} is not a multiple of {prefix}.num_heads={heads}")


def _missing(cfg: DictConfig, key: str) -> bool:
    return OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, "")


def check_checkpoint(key: str, path: Any, what: str) -> None:
    """``path`` (config key ``key``) is a complete checkpoint file (cheap: no tensor is read)."""
    from grn.checkpoints.files import require_checkpoint_file

    try:
        require_checkpoint_file(path, what)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} (given as {key}=)") from None


def image_size(key: str, path: Any) -> tuple[int, int]:
    """``(width, height)`` of the image file given as ``key`` (its header only)."""
    from PIL import Image

    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}={path}: image not found")
    try:
        with Image.open(path) as img:
            return img.size
    except Image.DecompressionBombError as err:
        raise ConfigError(f"{key}={path}: {err}; give a smaller image") from None
    except OSError as err:
        raise ConfigError(f"{key}={path} cannot be read as an image ({err})") from None


# every module takes `_partial_` optimiser (and, the refinement modules, LR-schedule) configs
# (grn.lit_modules.optim); where the keys of earlier releases went, per module
MOVED_OPTIMIZER_KEYS = {
    ("GeneratorLitModule", "T2IVLitModule"): {
        "betas": "optimizer.betas",
        "weight_decay": "optimizer.weight_decay",
        "warmup_steps": "lr_scheduler.warmup_steps",
    },
    ("TokenizerLitModule",): {
        "betas": "optimizer.betas",
        "weight_decay": "optimizer.weight_decay",
        "disc_weight_decay": "disc_optimizer.weight_decay",
        "ema_decay": "ema_decays",
    },
}


def validate_train(cfg: DictConfig, stages: Iterable[str]) -> None:
    """train.py: step counts of the chosen stages, the global cap, the sampler (and eval for the report)."""
    number("seed", cfg.get("seed"), integer=True)
    steps = cfg.get("max_steps")
    number("max_steps", steps, integer=True, ge=1, optional=True, note=_STEPS_NOTE if steps == -1 else "")
    for name in stages:
        steps = cfg.stages[name].get("max_steps")
        number(f"stages.{name}.max_steps", steps, integer=True, ge=1, note=_STEPS_NOTE if steps == -1 else "")
        stage = cfg.stages[name]
        number(f"stages.{name}.val_every", stage.get("val_every"), integer=True, ge=1, optional=True)
        lit = stage.get("lit_module") or {}
        moved = [keys for modules, keys in MOVED_OPTIMIZER_KEYS.items()
                 if str(lit.get("_target_", "")).endswith(modules)]
        for old, new in (moved[0] if moved else {}).items():
            if old in lit:
                raise ConfigError(f"stages.{name}.lit_module.{old} moved: use stages.{name}.lit_module.{new}")
        for part in ("datamodule", "lit_module"):
            if part in stage:
                check_numbers(stage[part], f"stages.{name}.{part}")
    trainer = cfg.get("trainer") or {}
    if "log_every_n_steps" in trainer:
        number("trainer.log_every_n_steps", trainer.log_every_n_steps, integer=True, ge=1)
    checkpoint = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    if "every_n_train_steps" in checkpoint:
        number("callbacks.model_checkpoint.every_n_train_steps", checkpoint.every_n_train_steps, integer=True,
               ge=0, optional=True)
    check_sampler(cfg.get("sampler"))
    if cfg.get("report"):
        check_eval(cfg.get("eval"))


def validate_sample(cfg: DictConfig) -> None:
    """sample.py: the checkpoint(s), classes or text settings, init / mask images, the sampler."""
    if _missing(cfg, "ckpt"):
        raise ConfigError("ckpt is not set: give ckpt=<a generator .ckpt written by train.py>")
    check_checkpoint("ckpt", cfg.ckpt, "generator")
    if not _missing(cfg, "tokenizer_ckpt"):
        check_checkpoint("tokenizer_ckpt", cfg.tokenizer_ckpt, "tokenizer")
    number("seed", cfg.get("seed"), integer=True)
    number("nrow", cfg.get("nrow"), integer=True, ge=1, optional=True)
    if cfg.get("prompts"):
        choice("mode", cfg.get("mode"), (None, "t2i", "t2v", "i2v"))
        number("height", cfg.get("height"), integer=True, ge=1)
        number("width", cfg.get("width"), integer=True, ge=1)
        frames = cfg.get("frames")
        number("frames", frames, integer=True, ge=1, optional=True, note=" of the form 1 + 4k")
        if frames is not None and (int(frames) - 1) % 4:
            raise ConfigError(f"frames={frames} is invalid: it must be 1 + 4k (1, 5, 9, 13, 17, ...)")
        number("fps", cfg.get("fps"), gt=0)
        if cfg.get("image"):
            image_size("image", cfg.image)
    else:
        classes = cfg.get("classes")
        if not OmegaConf.is_list(classes) or not len(classes):
            raise ConfigError(f"classes={_show(classes)} is invalid: give a list of class ids, e.g. classes=[3,3,7]")
        for i, c in enumerate(classes):
            number(f"classes[{i}]", c, integer=True, ge=0, note=" (a class id of the checkpoint)")
        if (cfg.get("init") is None) != (cfg.get("mask") is None):
            raise ConfigError("region re-generation needs both init=<image> and mask=<png>")
        if cfg.get("init") is not None:
            init, mask = image_size("init", cfg.init), image_size("mask", cfg.mask)
            if mask != init:
                raise ConfigError(
                    f"mask={cfg.mask} is {mask[0]}x{mask[1]} but init={cfg.init} is {init[0]}x{init[1]}: "
                    "draw the mask at the size of the init image")
    check_sampler(cfg.get("sampler"))


def validate_eval(cfg: DictConfig, task: str) -> None:
    """eval.py: the checkpoint, the sampler (generators) and the protocol's counts."""
    what = {"tokenizer": "tokenizer", "t2i": "T2I", "t2v": "T2V"}.get(task, "generator")
    if _missing(cfg, "ckpt"):
        raise ConfigError(f"ckpt is not set: give ckpt=<a {what} .ckpt written by train.py>")
    check_checkpoint("ckpt", cfg.ckpt, what)
    if task != "tokenizer" and not _missing(cfg, "tokenizer_ckpt"):
        check_checkpoint("tokenizer_ckpt", cfg.tokenizer_ckpt, "tokenizer")
    number("seed", cfg.get("seed"), integer=True)
    if task != "tokenizer":
        check_sampler(cfg.get("sampler"))
    check_eval(cfg.get("eval"))
    if task in ("t2i", "t2v"):
        if not (cfg.get("eval") or {}).get("classifier_cache"):
            raise ConfigError(f"task={task} reads the samples with the digits classifier: set "
                              "eval.classifier_cache (as eval=digits does)")
        if str(cfg.get("device", "cpu")) != "cpu":
            raise ConfigError(f"task={task} runs on the CPU (the captioned-digits models are tiny): "
                              f"drop device={cfg.device}")
        check_t2iv(cfg.get("t2iv"))
