"""The sampler settings as one typed, validated object: :class:`SamplerConfig`.

Built once from the Hydra ``sampler`` mapping (``conf/sampler/default.yaml``; its defaults are this class's) with
:meth:`SamplerConfig.build`, then passed down unchanged: entry points, pipelines, callbacks and training modules
hand the object to :func:`grn.sampling.entry.sample_labels` / :func:`grn.sampling.text.sample_t2iv`, and only there
is it split into :func:`grn.sampling.refine.refine`'s arguments (:meth:`SamplerConfig.refine_options`) and the
settings that are not the loop's (``seed``, ``bit_target``, ``compile``, ``precision``).

Unknown keys are rejected with one line naming them. The start-up check of the CLIs
(:func:`grn.entrypoints.validate.check_sampler`) uses the same keys and defaults and reports ranges as config
errors before any heavy work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from grn.models.packing import I2V_MODES
from grn.precision import PRECISIONS
from grn.sampling.guidance import GUIDANCE_TYPES, check_interval
from grn.sampling.refine import PT_VALUES
from grn.sampling.schedules import SCHEDULES
from grn.sampling.selection import SELECTIONS

BIT_TARGETS = (None, "absolute", "relative")
# the keys that are settings of the sampling entry, not arguments of refine()
_ENTRY_KEYS = ("seed", "bit_target", "compile", "precision", "i2v_mode")
I2V_CHOICES = (None, *I2V_MODES)
_INTS = ("num_steps", "complexity_warmup_steps", "complexity_min_steps", "complexity_max_steps", "seed")
_FLOATS = ("keep_prob_shift", "cfg_scale", "cfg_power", "temperature", "alpha", "k", "b")


@dataclass(frozen=True)
class SamplerConfig:
    """The refinement sampler's settings (paper Alg. 3 and its variants); the fields are the ``sampler`` config
    keys and their defaults those of ``conf/sampler/default.yaml`` (a test keeps the two equal).

    ``seed`` is not read by the entry functions (they take a seeded ``torch.Generator``); it is the seed the
    entry points and pipelines derive their generators from.
    """

    num_steps: int = 50
    schedule: str = "linear"
    keep_prob_shift: float = 1.0
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    cfg_type: str = "interval"
    cfg_power: float = 1.0
    temperature: float = 1.0
    selection: str = "random"
    bit_target: str | None = None
    revise: bool = True
    compile: bool = False
    precision: str = "fp32"
    complexity_warmup_steps: int = 5
    alpha: float = 50  # the defaults are written as conf/sampler/default.yaml writes them
    k: float = 0.0
    b: float = 50.0
    complexity_min_steps: int = 10
    complexity_max_steps: int = 50
    seed: int = 0
    pt_value: str = "nominal"
    i2v_mode: str | None = None  # image-to-video: first_frame | region; null: the network's (its config)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in _INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not _number(value).is_integer():
                raise ValueError(f"sampler.{name}={value!r} is invalid: it must be an integer")
            set_(self, name, int(value))
        for name in _FLOATS:
            value = getattr(self, name)
            if isinstance(value, bool) or _number(value) != _number(value):  # NaN fails too
                raise ValueError(f"sampler.{name}={value!r} is invalid: it must be a number")
            set_(self, name, float(value))
        for name in ("revise", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"sampler.{name}={getattr(self, name)!r} is invalid: it must be true or false")
        for name, choices in (("schedule", SCHEDULES), ("cfg_type", GUIDANCE_TYPES), ("selection", SELECTIONS),
                              ("bit_target", BIT_TARGETS), ("precision", PRECISIONS), ("pt_value", PT_VALUES),
                              ("i2v_mode", I2V_CHOICES)):
            if getattr(self, name) not in choices:
                shown = " | ".join("null" if c is None else str(c) for c in choices)
                raise ValueError(f"sampler.{name}={getattr(self, name)!r} is invalid: choose one of {shown}")
        if self.num_steps < 1 or self.complexity_max_steps < 1:
            raise ValueError(f"sampler.num_steps and sampler.complexity_max_steps must be >= 1, got {self.num_steps}, "
                             f"{self.complexity_max_steps}")
        set_(self, "cfg_interval", check_interval(tuple(self.cfg_interval)))

    @classmethod
    def build(cls, sampler: SamplerConfig | Mapping[str, Any] | None = None, **overrides: Any) -> SamplerConfig:
        """The config from a ``sampler`` mapping (a Hydra DictConfig or a dict; missing keys take the defaults)
        or an existing config, with ``overrides`` on top. Unknown keys are a one-line ValueError."""
        if isinstance(sampler, SamplerConfig):
            if not overrides:
                return sampler
            values = {**dataclasses.asdict(sampler), **overrides}
        else:
            values = {**dict(sampler or {}), **overrides}
        check_keys(values)
        return cls(**values)

    def replace(self, **overrides: Any) -> SamplerConfig:
        """A copy with ``overrides`` (config keys) changed."""
        return self.build(self, **overrides)

    @property
    def max_steps(self) -> int:
        """The most refinement steps one sample can take: ``complexity_max_steps`` under the complexity-aware
        schedule (Eq. 9), else ``num_steps``."""
        return self.complexity_max_steps if self.schedule == "complexity_aware" else self.num_steps

    def refine_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`grn.sampling.refine.refine` (everything but ``seed``, ``bit_target``,
        ``compile``, ``precision`` and ``i2v_mode``, which the entry functions apply themselves)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ENTRY_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``cfg_interval`` a list), as the config file writes them."""
        out = dataclasses.asdict(self)
        out["cfg_interval"] = list(out["cfg_interval"])
        return out


def _number(value: Any) -> float:
    """``float(value)``, or NaN for what is not a number (a string such as ``"hot"``, None): the checks above
    then report the key by name instead of float()'s message."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


SAMPLER_KEYS: tuple[str, ...] = tuple(f.name for f in fields(SamplerConfig))
# as written (before __post_init__ types them): what the start-up check prints for a key that is not given
SAMPLER_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(SamplerConfig)}
SAMPLER_DEFAULTS["cfg_interval"] = list(SAMPLER_DEFAULTS["cfg_interval"])


# keys of earlier releases -> their names now (one name per concept: the keep-probability shift is the training
# objective's too, and "t" is a keep-probability everywhere, so step counts are not t_*)
RENAMED_KEYS: dict[str, str] = {
    "snr_shift": "keep_prob_shift",
    "warmup_steps": "complexity_warmup_steps",
    "t_min": "complexity_min_steps",
    "t_max": "complexity_max_steps",
}


def migrate_keys(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """Stored settings (a checkpoint's ``hparams.sampler``, written before a rename) under today's key names. A
    user's config is not migrated: it gets the one-line error of :func:`unknown_keys` instead."""
    return {RENAMED_KEYS.get(str(k), str(k)): v for k, v in dict(stored or {}).items()}


def unknown_keys(sampler: Mapping[str, Any], prefix: str = "sampler") -> str | None:
    """The one-line message for the keys of ``sampler`` that are not sampler keys, or None when all are; a key
    that was renamed gets a message naming its new name."""
    renamed = [str(k) for k in sampler if k in RENAMED_KEYS]
    if renamed:
        old = renamed[0]
        return f"{prefix}.{old} was renamed: use {prefix}.{RENAMED_KEYS[old]}"
    extra = [str(k) for k in sampler if k not in SAMPLER_KEYS]
    if not extra:
        return None
    return (f"{prefix}: unknown key(s) {', '.join(extra)}; the sampler keys are {', '.join(SAMPLER_KEYS)} "
            "(conf/sampler/default.yaml)")


def check_keys(sampler: Mapping[str, Any], prefix: str = "sampler") -> None:
    message = unknown_keys(sampler, prefix)
    if message:
        raise ValueError(message)
