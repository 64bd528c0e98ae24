"""Checkpoint payloads that would run code if a loader built stored configs with Hydra or unpickled objects: each
creates a marker file when it runs (importable: the tests here put this folder on sys.path)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class OpenForWriting:
    """Unpickling this calls ``open(path, "w")``, which creates the marker file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def opener(marker: Path) -> dict[str, Any]:
    """``builtins.open(marker, "w")``: a target outside grn that Hydra 1.3 does not block."""
    return {"_target_": "builtins.open", "file": str(marker), "mode": "w"}


# name -> (config in place of a legitimate one, the target a refusal names)
def config_payloads(marker: Path, legit: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    first_arg = next(k for k in legit if k != "_target_")
    return {
        "open": (opener(marker), "builtins.open"),
        "touch": ({"_target_": "pathlib.Path.touch", "self": {"_target_": "pathlib.Path", "_args_": [str(marker)]}},
                  "pathlib.Path.touch"),
        "nested": ({**legit, first_arg: opener(marker)}, "builtins.open"),
        "torch_load": ({"_target_": "torch.load", "weights_only": False,
                        "f": {"_target_": "io.BytesIO", "initial_bytes": pickle.dumps(OpenForWriting(marker))}},
                       "torch.load"),
    }


PAYLOADS = ["open", "touch", "nested", "torch_load", "pickle_file"]


def poison(src: Path, key: str, payload: str, marker: Path, dst: Path) -> tuple[Path, str | None]:
    """A copy of checkpoint ``src`` at ``dst`` with ``hyper_parameters[key]`` replaced by ``payload`` (or, for
    ``pickle_file``, the whole file a pickled ``open`` call). Returns ``(dst, the target its refusal names)``."""
    if payload == "pickle_file":
        torch.save({"hyper_parameters": OpenForWriting(marker)}, dst)
        return dst, None
    ckpt = torch.load(src, weights_only=True)
    cfg, target = config_payloads(marker, ckpt["hyper_parameters"][key])[payload]
    ckpt["hyper_parameters"][key] = cfg
    torch.save(ckpt, dst)
    return dst, target
