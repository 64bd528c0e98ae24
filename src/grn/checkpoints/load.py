"""Networks and tokenizers out of checkpoint files, for sampling, evaluation, datamodules, pipelines and callbacks.

Every loader here takes a grn checkpoint (a training run's ``.ckpt``, an export, a converted release; layout in
:mod:`grn.checkpoints.layout`) or an official release file of its family (:mod:`grn.checkpoints.official`), and:

* checks the file cheaply first (:func:`~grn.checkpoints.files.require_checkpoint_file`: one line if it is missing
  or cut short);
* reads it once, on the CPU, memory-mapped with ``weights_only=True``
  (:func:`~grn.checkpoints.read_checkpoint`), so entries it does not use (optimiser states, other EMAs) are never
  read from disk; a file holding pickled objects raises ``UnsafeCheckpointError``;
* builds the stored config only if it names a registered grn class with plain arguments
  (:func:`~grn.checkpoints.build_from_config`, else ``UnsafeCheckpointError``);
* returns the module in eval mode on ``map_location``.

Pure torch: no Lightning import, so datamodules and pipelines can load without the training modules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grn.checkpoints.build import build_from_config, read_checkpoint, remember_config
from grn.checkpoints.files import require_checkpoint_file
from grn.checkpoints.layout import (
    NET_PREFIX,
    TOKENIZER_EMA_PREFIX,
    TOKENIZER_PREFIX,
    ema_prefix,
    is_export,
    load_ema,
    strip_prefix,
)
from grn.checkpoints.official import official_adapter

__all__ = ["load_generator", "load_network", "load_t2iv", "load_tokenizer"]


def _read(path: str | os.PathLike, what: str, kind: str) -> tuple[Path, Any, Any]:
    """``(path, the file's content, the official adapter for it or None)``; an official file of another family
    than ``kind`` is refused here, in one line saying where it goes."""
    path = require_checkpoint_file(path, what)
    ckpt = read_checkpoint(path, mmap=True)
    adapter = official_adapter(ckpt)
    if adapter is not None and adapter.kind != kind:
        raise ValueError(f"{path} is an official {adapter.family} release file, not a {what} checkpoint: give it "
                         f"where a {adapter.kind} is loaded")
    return path, ckpt, adapter


def load_network(ckpt_path: str | os.PathLike, kind: str = "generator", ema: str | None = "ema1",
                 map_location: str | torch.device = "cpu", what: str = "generator") -> tuple[nn.Module, dict]:
    """Rebuild the network of a generator or T2I/T2V checkpoint; returns ``(net in eval mode on map_location,
    hyper_parameters)``.

    Args:
        ckpt_path: a grn checkpoint with ``hyper_parameters.net`` and ``state_dict`` ``net.*`` (+ ``emas.*``), or
            an official file of the family (C2I for ``generator``, T2I/T2V for ``t2iv``).
        kind: the registry kind ``hyper_parameters.net`` must name (``generator`` or ``t2iv``).
        ema: the EMA whose weights are loaded (``ema1``, ``ema2``, ...; ``None``: the live weights). Exports and
            releases without EMAs hold final weights: there it does not choose.
        what: names the checkpoint in errors (``generator``, ``T2I/T2V``).
    Raises:
        FileNotFoundError / ValueError: missing, cut short, or not a checkpoint of this kind (one line).
        KeyError: no EMA named ``ema``.
        UnsafeCheckpointError: the file holds pickled objects or a config grn would not build.
    """
    path, ckpt, adapter = _read(ckpt_path, what, kind)
    if adapter is not None:
        net, hp = adapter.load(ckpt, path, ema=ema)
        return remember_config(net, hp["net"]).to(map_location).eval(), hp
    hp = (ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
    if "net" not in hp:
        if "tokenizer" in hp:
            raise ValueError(f"{path} is a tokenizer checkpoint, not a {what} one: give the .ckpt of a {what} run "
                             "(a tokenizer checkpoint goes to tokenizer_ckpt)")
        raise ValueError(f"{path} is not a {what} checkpoint of grn (no hyper_parameters.net): give the .ckpt of a "
                         f"{what} run or an official release file")
    net_cfg = hp["net"]
    if kind == "t2iv" and isinstance(net_cfg, dict) and "i2v_mode" not in net_cfg:
        # saved before the setting existed: those runs sampled image-to-video in the region form
        net_cfg = {**net_cfg, "i2v_mode": "region"}
    net = build_from_config(net_cfg, {kind}, path, "hyper_parameters.net")
    state = ckpt["state_dict"]
    net.load_state_dict(strip_prefix(state, NET_PREFIX))
    if ema is not None and not is_export(ckpt):
        load_ema(net, state, ema_prefix(ema), path, ema)
    return net.to(map_location).eval(), hp


def load_generator(ckpt_path: str | os.PathLike, ema: str | None = "ema1",
                   map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The class-conditional :class:`~grn.models.generator.GRN` of a checkpoint (or an official C2I file):
    ``(net in eval mode, hyper_parameters)``; ``ema`` names the EMA whose weights are loaded (``None``: the live
    weights). See :func:`load_network`."""
    return load_network(ckpt_path, "generator", ema, map_location, what="generator")


def load_t2iv(ckpt_path: str | os.PathLike, ema: str | None = "ema1",
              map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The text-conditioned :class:`~grn.models.t2iv.T2IVNet` of a checkpoint (or an official T2I/T2V file):
    ``(net in eval mode, hyper_parameters)``. See :func:`load_network`."""
    return load_network(ckpt_path, "t2iv", ema, map_location, what="T2I/T2V")


def load_tokenizer(ckpt_path: str | os.PathLike, map_location: str | torch.device = "cpu",
                   use_ema: bool = True) -> nn.Module:
    """The :class:`~grn.models.tokenizer.HBQTokenizer` of a tokenizer checkpoint, in eval mode on
    ``map_location``.

    A grn checkpoint gives its config (``hyper_parameters.tokenizer``, a registered grn tokenizer with plain
    arguments) and its EMA weights (``use_ema``; an export's weights are final) or live ones (``tokenizer.*``).
    An official release file (a dict with ``ema`` / ``vae``) is loaded strictly, in float32.

    Raises:
        FileNotFoundError / ValueError: missing, cut short, or not a tokenizer checkpoint (one line).
        UnsafeCheckpointError: the file holds pickled objects or a config grn would not build.
    """
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"tokenizer checkpoint not found: {ckpt_path} (pass the .ckpt of a tokenizer run)")
    path, ckpt, adapter = _read(ckpt_path, "tokenizer", "tokenizer")
    if adapter is not None:  # a release's ``ema`` weights are the only ones it has (facts §2.4)
        tok, hp = adapter.load(ckpt, path)
        return remember_config(tok, hp["tokenizer"]).to(map_location).float().eval()
    hp = (ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
    if "tokenizer" not in hp:
        kind_of = "a generator checkpoint, " if "net" in hp else ""
        raise ValueError(f"{path} is {kind_of}not a TokenizerLitModule checkpoint (no hyper_parameters.tokenizer): "
                         "give the .ckpt of a tokenizer run")
    tok = build_from_config(hp["tokenizer"], {"tokenizer"}, path, "hyper_parameters.tokenizer")
    state = ckpt["state_dict"]
    tok.load_state_dict(strip_prefix(state, TOKENIZER_PREFIX))
    if use_ema and not is_export(ckpt):
        load_ema(tok, state, TOKENIZER_EMA_PREFIX, path, "ema")
    return tok.to(map_location).eval()
