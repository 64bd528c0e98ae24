"""Objects from the configs that checkpoints store. A checkpoint is data, never code.

A training checkpoint keeps the Hydra config of what it holds (``hyper_parameters.net``, ``.tokenizer``,
``.text_encoder``). Hydra's ``instantiate`` would call any ``_target_`` such a file names (``torch.load`` on bytes
inside it, ``builtins.open``, ...), so the loaders use :func:`build_from_config` instead, which accepts only:

* a top-level ``_target_`` that is one of grn's own classes or factories registered here for the kind the loader
  asks for (:func:`register`);
* keyword arguments the callable takes (for a factory taking ``**kwargs``, those of the class it builds);
* plain values: None, bool, int, float, str, and lists, tuples and str-keyed dicts of them. No nested ``_target_``
  and no other Hydra key (``_partial_``, ``_args_``, ``_convert_``, ``_recursive_``, ...), at any depth.

The callable is then called directly, never through Hydra. Anything else raises :class:`UnsafeCheckpointError`
before any of the checkpoint's config is used.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["UnreadableCheckpointError", "UnsafeCheckpointError", "build_from_config", "check_stored_configs", "read_checkpoint", "register",
           "registered", "remember_config", "validated"]

_PLAIN = (type(None), bool, int, float, str)
_RULE = "only grn's own registered classes are built from checkpoints, with plain values as arguments"

# _target_ -> (kind, the class that a factory's **kwargs are passed on to, or None)
_REGISTRY: dict[str, tuple[str, str | None]] = {}


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that torch cannot read (damaged, cut short, or not a torch file). One line naming it."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint asks for more than data: a class outside the registry, a nested Hydra key, an argument that is
    not plain or not in the signature, or pickled objects. The message is one line naming the file and key."""


def register(target: str, kind: str, kwargs_of: str | None = None) -> None:
    """Let checkpoints build ``target`` (the dotted path their ``_target_`` gives, e.g.
    ``grn.models.tokenizer.HBQTokenizer``) where a loader asks for ``kind`` (``generator``, ``t2iv``,
    ``tokenizer``, ``text_encoder``, ``discriminator``). ``kwargs_of``: for a factory taking ``**kwargs``, the
    class they go to, whose constructor's argument names are then accepted too."""
    if not target.startswith("grn."):
        raise ValueError(f"only grn's own classes can be registered, got {target!r}")
    _REGISTRY[target] = (kind, kwargs_of)


def registered(kinds: Iterable[str]) -> list[str]:
    """The targets registered for ``kinds``, sorted."""
    kinds = set(kinds)
    return sorted(t for t, (kind, _) in _REGISTRY.items() if kind in kinds)


register("grn.models.generator.build_generator", "generator", kwargs_of="grn.models.generator.GRN")
register("grn.models.generator.GRN", "generator")
register("grn.models.t2iv.build_t2iv", "t2iv", kwargs_of="grn.models.t2iv.T2IVNet")
register("grn.models.t2iv.T2IVNet", "t2iv")
register("grn.models.tokenizer.HBQTokenizer", "tokenizer")
register("grn.models.discriminator.PatchDiscriminator", "discriminator")
register("grn.models.text_encoder.tiny_text_encoder", "text_encoder")
register("grn.models.text_encoder.load_umt5_encoder", "text_encoder")


def _resolve(target: str) -> Any:
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _argument_names(fn: Any, kwargs_of: str | None) -> set[str]:
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if kwargs_of and any(p.kind is p.VAR_KEYWORD for p in params):
        names |= _argument_names(_resolve(kwargs_of), None)
    return names


def _is_hydra_key(key: Any) -> bool:
    return isinstance(key, str) and len(key) > 2 and key.startswith("_") and key.endswith("_")


def _plain_problem(value: Any, path: str) -> tuple[str, str] | None:
    """``(key path, what is wrong)`` for the first part of ``value`` that is not a plain value, else None."""
    if isinstance(value, _PLAIN):
        return None
    if isinstance(value, (list, tuple)):
        items: Iterable[tuple[str, Any]] = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                return path, f"a non-string key {key!r}"
            if _is_hydra_key(key):
                nested = value.get("_target_")
                return f"{path}.{key}", (f"a nested target {nested!r}" if nested is not None else
                                          f"the Hydra key {key!r}")
        items = ((f"{path}.{k}", v) for k, v in value.items())
    else:
        return path, f"a {type(value).__module__}.{type(value).__qualname__}, not a plain value"
    for sub_path, sub in items:
        problem = _plain_problem(sub, sub_path)
        if problem:
            return problem
    return None


def validated(cfg: Any, allowed: Iterable[str], source: str | Path, where: str = "config") -> tuple[Any, dict]:
    """``(callable, keyword arguments)`` of a checkpoint's stored config if it is safe to build (see the module
    docstring); nothing is called. Arguments as for :func:`build_from_config`."""
    allowed = set(allowed)

    def refuse(path: str, what: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(f"{source}: refused {path}: {what}; {_RULE} (docs/checkpoints.md)")

    if not isinstance(cfg, dict):
        raise refuse(where, f"a {type(cfg).__name__}, not a config dict with a _target_")
    target = cfg.get("_target_")
    kind, kwargs_of = _REGISTRY.get(target, (None, None)) if isinstance(target, str) else (None, None)
    if kind not in allowed:
        wanted = " / ".join(sorted(allowed))
        what = f"a registered {kind}, not a {wanted}" if kind else f"not a registered {wanted} class"
        raise refuse(f"{where}._target_", f"{target!r} is {what} (registered: {', '.join(registered(allowed))})")
    fn = _resolve(target)
    names = _argument_names(fn, kwargs_of)
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    for key, value in kwargs.items():
        path = f"{where}.{key}"
        if _is_hydra_key(key):
            raise refuse(path, f"the Hydra key {key!r} (of target {target!r})")
        if key not in names:
            raise refuse(path, f"{target!r} takes no argument {key!r}")
        problem = _plain_problem(value, path)
        if problem:
            raise refuse(problem[0], f"{problem[1]} (in an argument of {target!r})")
    return fn, kwargs


def build_from_config(cfg: Any, allowed: Iterable[str], source: str | Path, where: str = "config") -> Any:
    """Build the object a checkpoint's stored config describes, if it is safe (see the module docstring); the
    registered callable is called directly with the stored keyword arguments, never through Hydra.

    Args:
        cfg: the stored config, a dict with ``_target_`` and keyword arguments.
        allowed: the kinds the caller expects (e.g. ``{"tokenizer"}``).
        source: the file the config came from, for the message.
        where: the config's key path in that file (e.g. ``hyper_parameters.net``), for the message.
    Raises:
        UnsafeCheckpointError: naming the file, the key path and the offending target; nothing was called.
    """
    fn, kwargs = validated(cfg, allowed, source, where)
    return remember_config(fn(**kwargs), {"_target_": cfg["_target_"], **kwargs})


def remember_config(obj: Any, cfg: dict[str, Any]) -> Any:
    """Record on a built module the config it was built from (``obj.grn_config``), so that a pipeline holding it
    can be saved again in the hub format (:mod:`grn.checkpoints.pretrained`); returns ``obj``."""
    if isinstance(obj, torch.nn.Module):
        obj.grn_config = cfg
    return obj


def check_stored_configs(path: Any, configs: Mapping[str, Iterable[str]], given: Iterable[str] = ()) -> None:
    """Refuse checkpoint ``path`` if a stored config ``hyper_parameters[key]`` would not pass
    :func:`build_from_config` as one of ``configs[key]`` (kinds); keys in ``given`` (the caller's own values) and
    absent or None configs are skipped, and nothing is built. For loaders that hand the stored hyper-parameters to a
    constructor, such as Lightning's ``load_from_checkpoint``. ``path``: a file path (memory-mapped) or a file
    object (rewound afterwards)."""
    if isinstance(path, (str, os.PathLike)):
        ckpt = read_checkpoint(path, mmap=True)
    else:
        start = path.tell()
        ckpt = read_checkpoint(path)
        path.seek(start)
    hp = ckpt.get("hyper_parameters") or {}
    for key, kinds in configs.items():
        if key not in given and hp.get(key) is not None:
            validated(hp[key], kinds, path, f"hyper_parameters.{key}")


def _unpickling_reason(err: Exception) -> str:
    """The sentence of torch's weights_only message that says what was refused."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text) or re.search(r"(Trying to load [^\n]+)", text)
    reason = found[1].split(". ")[0].rstrip(".") if found else "not plain data"
    return " ".join(reason.split())[:200]  # one line, even where a garbled name holds line breaks


def read_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers, nothing else is unpickled.

    ``mmap`` memory-maps the file (a legacy non-zip file is read without). A file holding any other pickled
    object raises :class:`UnsafeCheckpointError` naming it; nothing in the file runs. Any other failure to read
    (a damaged or foreign file: torch raises anything from ``EOFError`` to ``UnicodeDecodeError``) raises
    :class:`UnreadableCheckpointError`, one line naming the file.
    """
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError as err:
            if not (mmap and "mmap" in str(err)):
                raise
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it holds pickled objects, not only tensors and plain data "
            f"({_unpickling_reason(err)}); checkpoints are read with weights_only=True and {_RULE} "
            "(docs/checkpoints.md)"
        ) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes torch raise, one clear line instead
        detail = " ".join(str(err).split())[:160] or "no detail"
        raise UnreadableCheckpointError(
            f"{path}: cannot read this checkpoint ({type(err).__name__}: {detail}): the file is damaged, cut short "
            "or not a torch checkpoint; give a complete .ckpt file"
        ) from None
