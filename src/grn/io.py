"""Small file helpers: atomic writes, so that a crash mid-write never leaves a truncated file behind, and the clean-up
of what a killed write leaves (its temporary file). Whether a checkpoint is complete: :mod:`grn.checkpoints.files`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

# an atomic write of <name> goes to ".<name>.<random>.tmp" in the same folder, then is renamed over <name>
_TMP_PREFIX, _TMP_SUFFIX = ".", ".tmp"


def _atomic_write(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half of one
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write_bytes(text.encode(), path)


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes (a SIGKILL, a node failure) left in ``folder``;
    returns them. Call it only where nothing is writing into ``folder`` (at start-up)."""
    removed = []
    for tmp in sorted(Path(folder).glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}")):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
