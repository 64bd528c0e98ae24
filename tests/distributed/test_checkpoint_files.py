"""Checkpoint discovery for ``ckpt_path: auto``: files and complete sharded folders, never half-written ones."""

import os
import time

import torch

from grn.checkpoints import is_checkpoint, newest_checkpoint


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


def test_a_truncated_last_ckpt_is_skipped_for_the_newest_complete_one(tmp_path, caplog):
    """A last.ckpt cut short by a failed copy, beside six complete step files: resume takes the newest step file
    and says in one log line which file it skipped and why; an empty file and a foreign one are skipped too."""
    now = time.time()
    for i in range(6):
        step = tmp_path / f"step{i:07d}.ckpt"
        torch.save({"global_step": i, "w": torch.zeros(64)}, step)
        os.utime(step, (now - 100 + i, now - 100 + i))
    torch.save({"global_step": 6, "w": torch.zeros(4096)}, tmp_path / "full.bin")
    data = (tmp_path / "full.bin").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "zzz-empty.ckpt").write_bytes(b"")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with caplog.at_level("WARNING", logger="grn"):
        assert newest_checkpoint(tmp_path) == tmp_path / "step0000005.ckpt"
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 3 and str(tmp_path / "last.ckpt") in skipped[0] and "truncated" in skipped[0]
    assert any("empty" in m for m in skipped) and any("not a PyTorch checkpoint" in m for m in skipped)
    assert not is_checkpoint(tmp_path / "last.ckpt") and is_checkpoint(tmp_path / "step0000000.ckpt")
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": 1}, legacy, _use_new_zipfile_serialization=False)
    assert is_checkpoint(legacy)  # the pre-zip format is left to torch.load


def test_stale_temp_files_of_interrupted_writes_are_removed_at_start_up(tmp_path, caplog):
    import tempfile

    from grn.entrypoints.common import remove_stale_temp_files
    from grn.io import atomic_torch_save

    atomic_torch_save({"global_step": 1}, tmp_path / "last.ckpt")
    # what a SIGKILL during the next save leaves: grn.io's temporary name beside the target
    fd, stale = tempfile.mkstemp(prefix=".last.ckpt.", suffix=".tmp", dir=tmp_path)
    os.write(fd, b"half a checkpoint")
    os.close(fd)
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    with caplog.at_level("WARNING", logger="grn"):
        assert remove_stale_temp_files(tmp_path) == [tmp_path / os.path.basename(stale)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp", "last.ckpt"]
    assert [r.getMessage() for r in caplog.records] == [
        f"removed {stale}: the temporary file of an interrupted checkpoint write"
    ]
    assert remove_stale_temp_files(tmp_path / "missing") == []
