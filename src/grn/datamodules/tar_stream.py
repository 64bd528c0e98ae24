"""Reading a tar shard's bytes exactly: decompression by magic bytes, header parsing, and the member / damage
events that :mod:`grn.datamodules.shard_reader` groups into samples."""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
import zlib
from collections.abc import Iterator

import webdataset as wds

_BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(_BLOCK)
_MAX_EXT_HEADER = 1 << 16  # a pax / GNU long-name record larger than this is damage, not a name
_CHUNK = 1 << 20           # members over the size limit are skipped in reads of this size
_COMPRESSED = ((b"\x1f\x8b", "gzip", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
               (b"BZh", "bzip2", lambda f: bz2.BZ2File(f, mode="rb")),
               (b"\xfd7zXZ\x00", "xz", lambda f: lzma.LZMAFile(f, mode="rb")))


class StreamError(Exception):
    """The shard's byte stream failed: ``reason`` is ``truncated_tar`` (it ends early) or ``corrupt_tar``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class _Prefixed:
    """A read-only stream with ``head`` put back in front (the bytes read to recognise a compression)."""

    def __init__(self, head: bytes, f) -> None:
        self.head, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.f.read(n)
        if n < 0:
            out, self.head = self.head + self.f.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out if len(out) == n else out + self.f.read(n - len(out))

    def readable(self) -> bool:
        return True


class TarStream:
    """The decompressed bytes of a shard (gzip, bzip2 and xz are recognised by their magic bytes, whatever the
    file's name), read exactly, with the position; stream failures become :class:`StreamError`."""

    def __init__(self, raw) -> None:
        head = raw.read(6)
        codec = next((c for c in _COMPRESSED if head.startswith(c[0])), None)
        self.compression = codec[1] if codec else None
        self.f = codec[2](_Prefixed(head, raw)) if codec else _Prefixed(head, raw)
        self.pos = 0

    def read(self, n: int) -> bytes:
        parts, want = [], n
        try:
            while want > 0:
                data = self.f.read(want)
                if not data:
                    break
                parts.append(data)
                want -= len(data)
        except (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as err:
            reason = "truncated_tar" if isinstance(err, EOFError) else "corrupt_tar"
            raise StreamError(reason, f"{self.compression or 'file'} stream at byte {self.pos + n - want}: "
                                       f"{type(err).__name__}: {err}") from None
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        """Read and drop ``n`` bytes in bounded chunks; returns how many there were."""
        done = 0
        while done < n:
            data = self.read(min(_CHUNK, n - done))
            if not data:
                break
            done += len(data)
        return done


def _parse_header(block: bytes) -> tarfile.TarInfo | None:
    """The tar header in ``block`` (checksum verified by ``tarfile``), or None where it is not one."""
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except Exception:  # noqa: BLE001 - any bytes may arrive here; whatever fails to parse is not a header
        return None


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<len> <key>=<value>\\n"`` records of a pax extended header (ValueError where they do not parse)."""
    out, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= space - pos or pos + length > len(data) or data[pos + length - 1] != 0x0A:
            raise ValueError(f"pax record of length {length} at {pos}")
        key, sep, value = data[space + 1 : pos + length - 1].partition(b"=")
        if not sep:
            raise ValueError(f"pax record without '=' at {pos}")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def tar_events(stream: TarStream, max_member_bytes: int) -> Iterator[tuple]:
    """The regular files of a tar stream, and its damage, in order:

    * ``("member", name, data)``, or ``("member", name, None, size)`` for a member over ``max_member_bytes``
      (skipped unread);
    * ``("damage", start, end)``: bytes ``[start, end)`` held no valid header where one was due (a flipped byte or
      garbage in a header, zeroed blocks followed by more data); reading resumed at the next valid header, at
      ``end`` (or the damage ran to the end of the file). Archives concatenated (``cat a.tar b.tar``) read as
      damage too, and lose nothing but that count;
    * last, ``("end", reason, detail, headers, boundary)``: ``reason`` None for a clean end of archive, else
      ``truncated_tar`` / ``corrupt_tar``; ``headers`` counts the valid headers read; ``boundary``: the stream
      ended or failed where a header was due (the member before it is whole).

    Python's ``tarfile`` takes the first bad header for the end of the archive and drops the rest silently; this
    reader checks every 512-byte block where a header is due and resynchronises on the next valid one.
    """
    zeros = 0                 # end-of-archive (all-zero) blocks in a row where a header was due
    bad: int | None = None    # start of the damaged region being skipped
    headers = 0
    boundary = True           # the stream is where a header is due
    name: str | None = None   # from a GNU long-name or pax header, for the next member
    size: int | None = None   # from a pax header
    try:
        while True:
            at = stream.pos
            boundary = True
            block = stream.read(_BLOCK)
            if len(block) < _BLOCK:
                if bad is not None:
                    yield ("damage", bad, at)
                    yield ("end", "corrupt_tar", f"no valid header from byte {bad} to the end", headers, True)
                elif zeros and not block:
                    yield ("end", None, "", headers, True)
                else:
                    yield ("end", "truncated_tar", f"file ends at byte {at + len(block)} without the "
                                                   "end-of-archive blocks (cut short)", headers, not block)
                return
            if block == _ZERO_BLOCK:
                if bad is None:
                    zeros += 1
                continue
            info = _parse_header(block)
            if info is None:
                if bad is None:
                    bad = at - _BLOCK * zeros  # zero blocks then garbage: a zeroed header, not the archive's end
                continue
            headers += 1
            if bad is not None:
                yield ("damage", bad, at)
                bad, name, size = None, None, None
            elif zeros:  # zeroed blocks where a header was due (tarfile would have stopped here, silently)
                yield ("damage", at - _BLOCK * zeros, at)
                name, size = None, None
            zeros = 0
            boundary = False
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                             tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
                if info.size > _MAX_EXT_HEADER:
                    bad = at
                    continue
                data = stream.read(-(-info.size // _BLOCK) * _BLOCK)[: info.size]
                if len(data) < info.size:
                    yield ("end", "truncated_tar", f"file ends inside the header at byte {at}", headers, False)
                    return
                try:
                    if info.type == tarfile.GNUTYPE_LONGNAME:
                        name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    elif info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                        records = _pax_records(data)
                        name = records.get("path", name)
                        size = int(records["size"]) if "size" in records else size
                        if size is not None and size < 0:
                            raise ValueError(f"pax size {size}")
                except ValueError:
                    bad = at
                continue
            member_name = name if name is not None else info.name
            member_size = size if size is not None else info.size
            name = size = None
            if not (info.isreg() or info.type not in tarfile.SUPPORTED_TYPES):
                continue  # directories, links, devices: no data blocks
            padded = -(-member_size // _BLOCK) * _BLOCK
            sample_file = info.isreg() and info.type != tarfile.GNUTYPE_SPARSE
            if sample_file and member_size <= max_member_bytes:
                data = stream.read(member_size)
                if len(data) < member_size or stream.skip(padded - member_size) < padded - member_size:
                    yield ("end", "truncated_tar", f"file ends inside {member_name} (at byte {stream.pos})",
                           headers, False)
                    return
                yield ("member", member_name, data)
            else:
                if stream.skip(padded) < padded:
                    yield ("end", "truncated_tar", f"file ends inside {member_name} (at byte {stream.pos})",
                           headers, False)
                    return
                if sample_file:
                    yield ("member", member_name, None, member_size)
    except StreamError as err:
        if bad is not None:
            yield ("damage", bad, stream.pos)
        yield ("end", err.reason, err.detail, headers, boundary and bad is None)



def probe_shard(url: str) -> str | None:
    """None where ``url`` opens and starts with a tar header (after decompression), else why not (one line)."""
    try:
        with wds.gopen(url, "rb") as raw:
            block = TarStream(raw).read(_BLOCK)
    except StreamError as err:
        return err.detail
    except Exception as err:  # noqa: BLE001 - whatever the opener raises
        return f"{type(err).__name__}: {err}"
    if block == _ZERO_BLOCK:
        return "an empty archive"
    if len(block) < _BLOCK or _parse_header(block) is None:
        return "not a tar file (no tar header at its start)"
    return None

