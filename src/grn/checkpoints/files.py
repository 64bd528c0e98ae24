"""Which checkpoints are complete, and reading one whole: a ``.ckpt`` file or the sharded folder FSDP writes.

Two layouts exist on disk. A file is a zip written by ``torch.save`` (a legacy pre-zip pickle passes unread). A
sharded (``torch.distributed.checkpoint``) folder holds ``*.distcp`` shards, then ``.metadata``, then ``meta.pt``
(the non-tensor entries), written in that order. The checks here are cheap (no tensor is read), so start-up can
reject a cut-short file in one line before any heavy work; :func:`newest_checkpoint` is what ``ckpt_path: auto``
resumes from.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

from grn.checkpoints.build import read_checkpoint

__all__ = [
    "checkpoint_file_problem", "checkpoint_problem", "is_checkpoint", "load_consolidated", "newest_checkpoint",
    "require_checkpoint_file",
]

log = logging.getLogger("grn")


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


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete checkpoint (one phrase), or None. A ``.ckpt`` file must pass
    :func:`checkpoint_file_problem` (its zip directory is read, no tensor); a sharded
    (torch.distributed.checkpoint) folder must hold shards, ``.metadata`` and ``meta.pt`` written in that order. A
    save writes them in that order, so a folder with a missing or older ``.metadata`` / ``meta.pt`` is an
    interrupted save (also when it overwrote an older one)."""
    path = Path(path)
    if path.is_file():
        return checkpoint_file_problem(path)
    if not path.is_dir():
        return "it does not exist"
    metadata, meta = path / ".metadata", path / "meta.pt"
    if not (metadata.is_file() and meta.is_file()):
        return "an interrupted sharded save (no .metadata or meta.pt)"
    written = metadata.stat().st_mtime_ns
    shards_before = all(p.stat().st_mtime_ns <= written for p in path.glob("*.distcp"))
    if not (shards_before and meta.stat().st_mtime_ns >= written):
        return "an interrupted sharded save (shards newer than its .metadata / meta.pt)"
    return None


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A complete checkpoint: a ``.ckpt`` file or sharded folder (see :func:`checkpoint_problem`)."""
    return checkpoint_problem(path) is None


def newest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """``last.ckpt`` if complete, else the most recently written complete ``*.ckpt`` (file or sharded folder)
    under ``folder``, else None. Each incomplete one passed over is logged with the reason."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    last = folder / "last.ckpt"
    others = sorted((p for p in folder.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in [last, *others] if last.exists() else others:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("ckpt_path=auto: skipping %s: %s", path, problem)
    return None


def load_consolidated(path: str | os.PathLike, include_optimizer: bool = False) -> dict[str, Any]:
    """A training checkpoint as one dict of CPU tensors, from a file or a sharded (DCP) folder.

    A file is memory-mapped (:func:`~grn.checkpoints.read_checkpoint`), so what the caller never touches (the
    optimiser states) is never read. For a folder, ``state_dict`` is assembled from all shards without a process
    group; optimiser states are read only with ``include_optimizer`` (under their DCP names ``optimizer_0``, ...)."""
    path = Path(path)
    if path.is_file():
        return read_checkpoint(require_checkpoint_file(path), mmap=True)
    problem = checkpoint_problem(path)
    if problem:
        raise FileNotFoundError(f"{path} is not a checkpoint: {problem} (give a .ckpt file or a complete sharded "
                                "checkpoint folder)")
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    ckpt = read_checkpoint(path / "meta.pt")
    state: dict[str, Any] = {}
    keys = None if include_optimizer else {"state_dict"}
    _load_state_dict(
        state, storage_reader=FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True
    )
    ckpt.update(state)
    return ckpt
