"""Damaged shards lose only what the damage touched, and every loss is counted, with the shard's name logged once.

Python's ``tarfile`` takes a bad header for the end of the archive: one flipped byte or a garbage block inside a
shard used to drop the rest of it (5 of 8 samples) with no count and no log line, and every valid ``.tar.gz`` was
counted as truncated and lost its last sample. Duplicate keys were merged (adjacent) or trained on twice (apart).
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import tarfile

import pytest

from grn.datamodules.bad_samples import BadSampleCounter
from grn.datamodules.images import ImageShardDataModule
from grn.datamodules.wds import shard_samples
from grn.datamodules.writers import write_shards

from shard_helpers import digit_png_samples, read_all

KEYS = [f"d{i:06d}" for i in range(8)]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """8 digit samples (cls + png each), as bytes, and the tar offsets of their members."""
    out = tmp_path_factory.mktemp("tar_faults")
    write_shards(digit_png_samples(8), out, max_count=100)
    data = (out / "shard-000000.tar").read_bytes()
    return data, {m.name: m.offset for m in tarfile.open(fileobj=io.BytesIO(data))}


def _read(tmp_path, data: bytes, name: str = "s.tar", **kw):
    path = tmp_path / name
    path.write_bytes(data)
    counter = BadSampleCounter()
    keys = [s["__key__"] for s in shard_samples(iter([str(path)]), counter, **kw)]
    return keys, {r: n for r, n in counter.counts.items() if n}


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def _trailer(data: bytes) -> int:
    """Where the end-of-archive blocks begin."""
    end = len(data)
    while data[end - 512 : end] == bytes(512):
        end -= 512
    return -(-end // 512) * 512


@pytest.mark.parametrize(("member", "where"), [("d000003.png", 100), ("d000003.png", 150), ("d000003.cls", 0),
                                               ("d000003.cls", 124)])
def test_a_flipped_header_byte_loses_one_sample(tmp_path, shard, member, where):
    data, offsets = shard
    at = offsets[member] + where  # 100: mode, 124: size, 150: checksum, 0: name
    keys, bad = _read(tmp_path, _patch(data, at, bytes([data[at] ^ 0x5A])))
    assert keys == [k for k in KEYS if k != "d000003"] and bad == {"corrupt_tar": 1}


def test_damage_in_the_first_sample_drops_both_neighbours(tmp_path, shard):
    """Before any intact sample, the one the damage follows cannot be judged: it is dropped too, and counted."""
    data, offsets = shard
    keys, bad = _read(tmp_path, _patch(data, offsets["d000001.cls"] + 124, b"\x7f"))
    assert keys == KEYS[2:] and bad == {"corrupt_tar": 2}


def test_a_garbage_or_zeroed_header_block_loses_one_sample(tmp_path, shard):
    data, offsets = shard
    garbage = bytes((i * 37 + 11) % 256 for i in range(512))
    for block in (garbage, bytes(512)):
        keys, bad = _read(tmp_path, _patch(data, offsets["d000005.cls"], block))
        assert keys == [k for k in KEYS if k != "d000005"] and bad == {"corrupt_tar": 1}
    # a whole sample gone (both headers): the samples on either side are whole, the loss is still counted
    broken = _patch(_patch(data, offsets["d000002.cls"], garbage), offsets["d000002.png"], garbage)
    keys, bad = _read(tmp_path, broken)
    assert keys == [k for k in KEYS if k != "d000002"] and bad == {"corrupt_tar": 1}


def test_damage_in_the_end_of_archive_blocks_keeps_every_sample(tmp_path, shard):
    """Garbage after zero blocks cannot be told from a zeroed header: it counts once, and every sample is kept."""
    data, _ = shard
    keys, bad = _read(tmp_path, _patch(data, _trailer(data) + 700, b"\x01"))
    assert keys == KEYS and bad == {"corrupt_tar": 1}
    keys, bad = _read(tmp_path, data + data)  # two archives concatenated: read as damage, then duplicates
    assert keys == KEYS and bad == {"corrupt_tar": 1, "duplicate_key": 8}


@pytest.mark.parametrize(("suffix", "compress"), [(".tar.gz", gzip.compress), (".tar.bz2", bz2.compress),
                                                  (".tar.xz", lzma.compress), (".tar", lambda d: d)])
def test_compressed_shards_are_read_whole(tmp_path, shard, suffix, compress):
    data, _ = shard
    keys, bad = _read(tmp_path, compress(data), "s" + suffix)
    assert keys == KEYS and bad == {}
    # cut inside the compressed stream: the samples before are kept, the loss counted once (bzip2 decodes whole
    # 900 kB blocks: a cut one gives nothing)
    keys, bad = _read(tmp_path, compress(data)[: len(compress(data)) // 2], "cut" + suffix)
    if suffix == ".tar.bz2":
        assert keys == [] and bad == {"unreadable_tar": 1}
    else:
        assert keys == KEYS[: len(keys)] and 0 < len(keys) < 8 and bad == {"truncated_tar": 1}


def test_a_corrupt_gzip_stream_is_counted(tmp_path, shard):
    data, _ = shard
    packed = bytearray(gzip.compress(data))
    packed[len(packed) // 2] ^= 0xFF
    keys, bad = _read(tmp_path, bytes(packed), "s.tar.gz")
    assert set(keys) <= set(KEYS) and set(bad) <= {"corrupt_tar", "truncated_tar"} and sum(bad.values()) >= 1


def test_cut_shards_count_once(tmp_path, shard):
    data, offsets = shard
    keys, bad = _read(tmp_path, data[: offsets["d000004.png"] + 700])        # inside a member
    assert keys == KEYS[:4] and bad == {"truncated_tar": 1}
    keys, bad = _read(tmp_path, data[: offsets["d000004.cls"]])              # at a header: d000003 is whole
    assert keys == KEYS[:4] and bad == {"truncated_tar": 1}
    keys, bad = _read(tmp_path, data[: offsets["d000004.png"]])              # at a header, d000004 incomplete
    assert keys == KEYS[:4] and bad == {"truncated_tar": 1}
    keys, bad = _read(tmp_path, data[: _trailer(data) + 512])               # inside the end blocks: all kept
    assert keys == KEYS and bad == {}


def test_duplicate_keys_are_counted_and_trained_once(tmp_path):
    good = list(digit_png_samples(6))
    adjacent = good[:3] + [{**good[2], "cls": 9}] + good[3:]   # d000002 twice in a row (would be merged)
    apart = good + [{**good[1], "cls": 9}]                      # d000001 again at the end (would train twice)
    for i, samples in enumerate((adjacent, apart)):
        out = tmp_path / str(i)
        write_shards(samples, out, max_count=100)
        dm = ImageShardDataModule(train_shards=str(out / "shard-000000.tar"), image_size=8, num_classes=10,
                                  batch_size=2, resampled=False, shuffle_buffer=0, drop_last=False)
        keys, bad = read_all(dm)
        assert keys == [s["__key__"] for s in good] and bad == {"duplicate_key": 1}


def test_oversized_members_are_skipped_unread(tmp_path, shard):
    data, offsets = shard
    samples = list(digit_png_samples(4))
    samples[1]["png"] = bytes(5000)
    out = tmp_path / "big"
    write_shards(samples, out, max_count=100)
    keys, bad = _read(tmp_path, (out / "shard-000000.tar").read_bytes(), max_member_bytes=4096)
    assert keys == ["d000000", "d000002", "d000003"] and bad == {"too_large": 1}


def test_long_names_in_pax_and_gnu_headers(tmp_path):
    long_key = "k" * 150
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name, body in ((f"dir/{long_key}.cls", b"3"), (f"dir/{long_key}.txt", "é".encode()),
                               ("short.cls", b"1")):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        keys, bad = _read(tmp_path, buf.getvalue())
        assert keys == [f"dir/{long_key}", "short"] and bad == {}


def test_unreadable_shards(tmp_path, shard):
    data, _ = shard
    keys, bad = _read(tmp_path, b"")
    assert keys == [] and bad == {"unreadable_tar": 1}
    keys, bad = _read(tmp_path, b"\x89PNG\r\n\x1a\n" + bytes(3000))
    assert keys == [] and bad == {"unreadable_tar": 1}
    # a source whose every shard is unreadable stops at start-up, in one line naming it
    (tmp_path / "bad").mkdir()
    for i in range(3):
        (tmp_path / "bad" / f"s{i}.tar").write_bytes(b"not a tar" * (i + 1))
    (tmp_path / "good.tar").write_bytes(data)
    dm = ImageShardDataModule(train_shards=[str(tmp_path / "good.tar"), str(tmp_path / "bad" / "*.tar")],
                              weights=[1, 1], image_size=8, num_classes=10, batch_size=2, epoch_samples=8)
    with pytest.raises(ValueError, match="no readable shard in") as err:
        dm.train_dataloader()
    assert "\n" not in str(err.value) and "bad/*.tar" in str(err.value) and "3 tried" in str(err.value)
    # one unreadable shard among good ones (one source) is skipped and counted
    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "a.tar").write_bytes(b"not a tar")
    (tmp_path / "mix" / "b.tar").write_bytes(data)
    dm = ImageShardDataModule(train_shards=str(tmp_path / "mix" / "*.tar"), image_size=8, num_classes=10,
                              batch_size=2, resampled=False, shuffle_buffer=0, drop_last=False)
    keys, bad = read_all(dm)
    assert sorted(keys) == KEYS and bad == {"unreadable_tar": 1}


def test_shards_that_go_bad_after_start_up_end_the_run_in_one_line(tmp_path, shard):
    data, _ = shard
    (tmp_path / "s.tar").write_bytes(data)
    dm = ImageShardDataModule(train_shards=str(tmp_path / "s.tar"), image_size=8, num_classes=10, batch_size=2,
                              epoch_samples=64)
    loader = dm.train_dataloader()  # passes the start-up check
    (tmp_path / "s.tar").write_bytes(b"")
    with pytest.raises(RuntimeError, match="100 shards in a row gave no sample"):
        next(iter(loader))  # resampled: without the check this would draw the empty shard forever


def test_each_damaged_shard_is_logged_once_by_name(tmp_path, shard, caplog):
    data, offsets = shard
    garbage = bytes((i * 37 + 11) % 256 for i in range(512))
    twice = _patch(_patch(data, offsets["d000002.cls"], garbage), offsets["d000006.png"], garbage)
    with caplog.at_level(logging.WARNING, logger="grn.datamodules.bad_samples"):
        keys, bad = _read(tmp_path, twice, "twice.tar")
    assert keys == [k for k in KEYS if k not in ("d000002", "d000006")] and bad == {"corrupt_tar": 2}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "twice.tar" in lines[0]
