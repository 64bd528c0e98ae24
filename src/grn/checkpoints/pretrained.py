"""The hub format of a trained pipeline: a folder (or a Hugging Face model repo) of safetensors weights and JSON
configs, read without unpickling anything and built without Hydra.

    config.json                  {"grn_format": 1, "task": "c2i" | "t2i" | "t2v" | "i2v",
                                  "net": {"_target_": ..., constructor arguments},
                                  "sampler": {sampler keys}, "source": {where it came from}}
    model.safetensors            the network's state dict (EMA weights where the pipeline had loaded them)
    tokenizer/config.json        {"grn_format": 1, "tokenizer": {"_target_": ..., ...}}
    tokenizer/model.safetensors
    text_encoder/config.json     text models only: {"grn_format": 1, "text_encoder": {...}} with
                                 text_encoder/model.safetensors (a small grn encoder), or
                                 {"grn_format": 1, "hub": {"repo_id", "weights", "tokenizer"}, "dim": D}: where to
                                 get the umT5 encoder (the official files; resolved through the hub cache)
    README.md, samples.png       the model card (:mod:`grn.model_card`), not read on load

Configs are checked key by key (unknown or missing keys, a wrong ``grn_format``: one line naming the file and the
key) and built only through :func:`grn.checkpoints.build_from_config` (registered grn classes, plain arguments).
Weights are checked by name and shape against the network the config builds before anything is copied.
Files are found through a ``resolve(name) -> Path`` callable (:func:`grn.hub.pretrained_resolver`), so a local
folder and a hub repo are read by the same code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grn.checkpoints.build import build_from_config
from grn.io import atomic_write_bytes, atomic_write_json

__all__ = ["CONFIG", "FORMAT_VERSION", "PretrainedParts", "WEIGHTS", "config_of", "load_weights",
           "read_pretrained", "save_weights", "write_pretrained"]

FORMAT_VERSION = 1
CONFIG, WEIGHTS = "config.json", "model.safetensors"
TOKENIZER_DIR, TEXT_ENCODER_DIR = "tokenizer", "text_encoder"
TASKS = ("c2i", "t2i", "t2v", "i2v")
# required and optional top-level keys of each config.json
_ROOT = ({"grn_format", "task", "net"}, {"sampler", "source"})
_TOKENIZER = ({"grn_format", "tokenizer"}, set())
_TEXT_ENCODER = ({"grn_format"}, {"text_encoder", "hub", "dim"})
_HUB_REFERENCE = {"repo_id", "weights", "tokenizer"}
SMALL_TEXT_ENCODERS = ("grn.models.text_encoder.tiny_text_encoder",)  # saved with their weights

Resolve = Callable[[str], Path]


@dataclass
class PretrainedParts:
    """What a hub folder holds, built: the network (eval mode, CPU), the tokenizer, the caption encoder (text
    models; None when the caller supplies one), the task, the stored sampler settings and provenance."""

    task: str
    net: nn.Module
    tokenizer: nn.Module
    text_encoder: nn.Module | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


def config_of(module: nn.Module, what: str) -> dict[str, Any]:
    """The constructor config grn's loaders recorded on ``module`` (``grn_config``: ``_target_`` + plain
    arguments), as JSON values; a module built by hand has none: one line saying how to give it."""
    cfg = getattr(module, "grn_config", None)
    if not isinstance(cfg, Mapping) or "_target_" not in cfg:
        raise ValueError(f"the pipeline's {what} has no recorded constructor config: load it through grn's loaders "
                         f"(grn.checkpoints) or set {what}.grn_config = {{'_target_': ..., <arguments>}}")
    return json.loads(json.dumps(dict(cfg)))  # tuples -> lists: exactly what config.json will hold


def _tied_groups(module: nn.Module) -> list[list[str]]:
    """State-dict names grouped by the parameter or buffer they name (tied weights, e.g. an encoder's two
    embedding names), in state-dict order; safetensors stores each shared tensor once. By identity, so that it
    holds on the meta device too."""
    groups: dict[int, list[str]] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return list(groups.values())


def save_weights(module: nn.Module, path: Path) -> Path:
    """``module``'s state dict as safetensors (CPU, contiguous; a tied tensor under its first name)."""
    from safetensors.torch import save

    state = module.state_dict()
    tensors = {names[0]: state[names[0]].detach().cpu().contiguous() for names in _tied_groups(module)}
    return atomic_write_bytes(save(tensors, metadata={"format": "pt"}), path)


def load_weights(module: nn.Module, path: Path, assign: bool = False) -> nn.Module:
    """Load safetensors ``path`` into ``module`` after checking every name and shape (one line naming the file and
    the first missing, unexpected or mis-shaped tensor); returns ``module``. ``assign``: the file's tensors
    (memory-mapped, in their stored dtype) become the parameters, as for a module built on the meta device."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        stored = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        detail = " ".join(str(err).split())[:160]
        raise ValueError(f"{path}: cannot read these weights ({type(err).__name__}: {detail}): the file is damaged "
                         "or not safetensors; download or save it again") from None
    state = module.state_dict()
    groups = _tied_groups(module)
    missing = [names[0] for names in groups if not any(n in stored for n in names)]
    unexpected = sorted(set(stored) - set(state))
    wrong = [k for k in stored if k in state and tuple(stored[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        if missing:
            what = f"{len(missing)} tensor(s) missing, e.g. {missing[0]}"
        elif unexpected:
            what = f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}"
        else:
            k = wrong[0]
            what = f"{k} has shape {list(stored[k].shape)}, the network {list(state[k].shape)}"
        raise ValueError(f"{path}: the weights do not fit the network its config.json builds: {what}")
    for names in groups:  # every name of a tied tensor gets the one stored copy
        present = next(n for n in names if n in stored)
        stored.update({n: stored[present] for n in names})
    module.load_state_dict(stored, strict=True, assign=assign)
    return module


def _read_config(resolve: Resolve, name: str, keys: tuple[set[str], set[str]]) -> dict[str, Any]:
    """The JSON object of file ``name``, its top-level keys checked against (required, optional)."""
    path = resolve(name)
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON config ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:120]})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    required, optional = keys
    missing, unknown = sorted(required - set(cfg)), sorted(set(cfg) - required - optional)
    if missing:
        raise ValueError(f"{path}: missing key {missing[0]!r} (a grn hub config needs {', '.join(sorted(required))})")
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise ValueError(f"{path}: unknown key {unknown[0]!r} (the keys of this file are {allowed})")
    if cfg["grn_format"] != FORMAT_VERSION:
        raise ValueError(f"{path}: key 'grn_format' is {cfg['grn_format']!r}; this grn reads format "
                         f"{FORMAT_VERSION}")
    cfg["_path"] = path
    return cfg


def _build(resolve: Resolve, folder: str, cfg: Any, kinds: set[str], config_file: Path, where: str) -> nn.Module:
    """The module ``cfg`` describes with the weights of ``folder/model.safetensors``. Built on the meta device
    (no random init, no second copy of a multi-GB network: the file's tensors are assigned) unless it makes
    buffers in its constructor that the file does not hold (e.g. RoPE tables): then built for real."""
    weights = resolve(f"{folder}{WEIGHTS}")
    with torch.device("meta"):
        module = build_from_config(cfg, kinds, config_file, where)
    kept = set(module.state_dict())
    if all(name in kept for name, _ in module.named_buffers()):
        return load_weights(module, weights, assign=True).eval()
    return load_weights(build_from_config(cfg, kinds, config_file, where), weights).eval()


def _read_text_encoder(resolve: Resolve, cache_dir: Any) -> nn.Module:
    cfg = _read_config(resolve, f"{TEXT_ENCODER_DIR}/{CONFIG}", _TEXT_ENCODER)
    path = cfg["_path"]
    if ("text_encoder" in cfg) == ("hub" in cfg):
        raise ValueError(f"{path}: give exactly one of the keys 'text_encoder' (saved weights) and 'hub' (where "
                         "to get the encoder)")
    if "text_encoder" in cfg:
        return _build(resolve, f"{TEXT_ENCODER_DIR}/", cfg["text_encoder"], {"text_encoder"}, path,
                      "text_encoder")
    ref = cfg["hub"]
    if not isinstance(ref, dict) or set(ref) != _HUB_REFERENCE:
        got = sorted(ref) if isinstance(ref, dict) else type(ref).__name__
        raise ValueError(f"{path}: key 'hub' must hold exactly {', '.join(sorted(_HUB_REFERENCE))}, got {got}")
    from grn.hub import hub_file, hub_folder
    from grn.models.text_encoder import load_umt5_encoder

    weights = hub_file(ref["repo_id"], ref["weights"], cache_dir)
    vocab = hub_folder(ref["repo_id"], ref["tokenizer"], cache_dir)
    return load_umt5_encoder(weights, vocab, dtype="float32", dim=cfg.get("dim"))


def read_pretrained(resolve: Resolve, text_encoder: nn.Module | None = None,
                    cache_dir: str | Path | None = None) -> PretrainedParts:
    """Build what a hub folder holds (see the module docstring). ``resolve(name)`` gives the local path of a file
    of the folder (or raises one line naming it); ``text_encoder``: an already loaded caption encoder, used instead
    of the stored one; ``cache_dir``: the hub cache for a referenced encoder."""
    root = _read_config(resolve, CONFIG, _ROOT)
    path, task = root["_path"], root["task"]
    if task not in TASKS:
        raise ValueError(f"{path}: key 'task' is {task!r}; choose one of {', '.join(TASKS)}")
    sampler = root.get("sampler") or {}
    if not isinstance(sampler, dict):
        raise ValueError(f"{path}: key 'sampler' must be an object of sampler keys")
    from grn.sampling.config import SamplerConfig

    try:
        SamplerConfig.build(sampler)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: key 'sampler': {err}") from None
    net = _build(resolve, "", root["net"], {"generator" if task == "c2i" else "t2iv"}, path, "net")
    tok_cfg = _read_config(resolve, f"{TOKENIZER_DIR}/{CONFIG}", _TOKENIZER)
    tokenizer = _build(resolve, f"{TOKENIZER_DIR}/", tok_cfg["tokenizer"], {"tokenizer"}, tok_cfg["_path"],
                       "tokenizer")
    if task != "c2i" and text_encoder is None:
        text_encoder = _read_text_encoder(resolve, cache_dir)
    return PretrainedParts(task, net, tokenizer, text_encoder, sampler, dict(root.get("source") or {}))


def _text_encoder_config(encoder: nn.Module) -> dict[str, Any]:
    """What ``text_encoder/config.json`` says: a small grn encoder is saved; umT5 is referenced on the hub."""
    cfg = getattr(encoder, "grn_config", None)
    if isinstance(cfg, Mapping) and cfg.get("_target_") in SMALL_TEXT_ENCODERS:
        return {"grn_format": FORMAT_VERSION, "text_encoder": config_of(encoder, "text_encoder")}
    from grn.hub import OFFICIAL_REPO, TEXT_ENCODER_TOKENIZER, TEXT_ENCODER_WEIGHTS
    from grn.models.text_encoder import UMT5_XXL

    dim = int(getattr(encoder, "dim", 0))
    if dim != UMT5_XXL["d_model"]:
        raise ValueError(f"the pipeline's text encoder (width {dim}) is neither a small grn encoder nor umT5-XXL: "
                         "grn cannot record how to get it")
    ref = {"repo_id": OFFICIAL_REPO, "weights": TEXT_ENCODER_WEIGHTS, "tokenizer": TEXT_ENCODER_TOKENIZER}
    return {"grn_format": FORMAT_VERSION, "hub": ref, "dim": dim}


def write_pretrained(folder: str | Path, task: str, net: nn.Module, tokenizer: nn.Module,
                     text_encoder: nn.Module | None = None, sampler: Mapping[str, Any] | None = None,
                     source: Mapping[str, Any] | None = None) -> Path:
    """Write the weights and configs of a pipeline's parts into ``folder`` (created; existing files replaced,
    each atomically); returns ``folder``. The model card is written by the pipeline (:mod:`grn.model_card`)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    folder = Path(folder)
    root = {"grn_format": FORMAT_VERSION, "task": task, "net": config_of(net, "network"),
            "sampler": dict(sampler or {}), "source": json.loads(json.dumps(dict(source or {}), default=str))}
    tok = {"grn_format": FORMAT_VERSION, "tokenizer": config_of(tokenizer, "tokenizer")}
    text = _text_encoder_config(text_encoder) if task != "c2i" else None
    save_weights(net, folder / WEIGHTS)
    save_weights(tokenizer, folder / TOKENIZER_DIR / WEIGHTS)
    atomic_write_json(tok, folder / TOKENIZER_DIR / CONFIG)
    if text is not None:
        if "text_encoder" in text:
            save_weights(text_encoder, folder / TEXT_ENCODER_DIR / WEIGHTS)
        atomic_write_json(text, folder / TEXT_ENCODER_DIR / CONFIG)
    atomic_write_json(root, folder / CONFIG)  # last: a folder with a config.json is complete
    return folder
