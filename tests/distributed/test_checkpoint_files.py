"""Checkpoint discovery for ``ckpt_path: auto``: files and complete sharded folders, never half-written ones."""

import os
import time

import torch

from grn.entrypoints.common import is_checkpoint, newest_checkpoint


def sharded(folder, complete=True):
    folder.mkdir(parents=True)
    (folder / "__0_0.distcp").write_bytes(b"x")
    if complete:
        (folder / ".metadata").write_bytes(b"x")
        (folder / "meta.pt").write_bytes(b"x")
    return folder


def test_newest_complete_checkpoint_wins(tmp_path):
    assert newest_checkpoint(tmp_path / "missing") is None
    old = tmp_path / "step0000010.ckpt"
    torch.save({}, old)
    os.utime(old, (time.time() - 100, time.time() - 100))
    newer = sharded(tmp_path / "step0000020.ckpt")
    broken = sharded(tmp_path / "step0000030.ckpt", complete=False)  # killed while writing: no metadata
    assert is_checkpoint(old) and is_checkpoint(newer) and not is_checkpoint(broken)
    assert newest_checkpoint(tmp_path) == newer
    last = sharded(tmp_path / "last.ckpt")
    os.utime(last, (time.time() - 500, time.time() - 500))
    assert newest_checkpoint(tmp_path) == last  # last.ckpt first, whatever its age


def test_a_sharded_save_cut_off_while_overwriting_is_not_complete(tmp_path):
    folder = sharded(tmp_path / "last.ckpt")
    old = time.time() - 60
    for name in (".metadata", "meta.pt"):
        os.utime(folder / name, (old, old))
    os.utime(folder / "__0_0.distcp", (old - 1, old - 1))
    assert is_checkpoint(folder)
    (folder / "__0_0.distcp").write_bytes(b"new shard")  # the next save got this far, then the job died
    assert not is_checkpoint(folder)


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_fails(tmp_path):
    from grn.distributed.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    try:
        io.save_checkpoint({"global_step": 2, "x": Unpicklable()}, path)
    except RuntimeError:
        pass
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind
