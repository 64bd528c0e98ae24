"""Small file helpers: atomic writes, so that a crash mid-write never leaves a truncated file behind, the clean-up
of what a killed write leaves (its temporary file), and a cheap check that a checkpoint file is complete."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
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


def checkpoint_file_problem(path: str | os.PathLike) -> str | None:
    """What makes file ``path`` an incomplete or wrong PyTorch checkpoint (one phrase), or None if it looks
    complete. Cheap for multi-GB files: only the zip directory at the end of the file is read, no tensor. A legacy
    (pre-zip) ``torch.save`` file passes unread."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(2)
    except FileNotFoundError:
        return "the file does not exist"
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    if size == 0:
        return "the file is empty (0 bytes)"
    if head[:1] == b"\x80":  # a pickle: the legacy torch.save format
        return None
    if head != b"PK":
        return "it is not a PyTorch checkpoint (neither a zip archive nor a pickle)"
    truncated = f"it is truncated or corrupt ({size} bytes, no complete zip directory): an interrupted write or copy"
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return truncated
    if not any(e.filename.endswith("data.pkl") for e in entries):
        return "a zip archive without data.pkl, not a PyTorch checkpoint"
    if max(e.header_offset + e.compress_size for e in entries) > size:
        return truncated
    return None


def require_checkpoint_file(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """``path`` if it is a complete checkpoint file; else FileNotFoundError (missing) or ValueError, one line
    naming the file, what is wrong with it and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint not found: {path}" + (" (a folder)" if path.is_dir() else ""))
    problem = checkpoint_file_problem(path)
    if problem:
        raise ValueError(f"{what} checkpoint {path} is unusable: {problem}; give a complete .ckpt file (copy it "
                         "again if a copy was cut short)")
    return path
