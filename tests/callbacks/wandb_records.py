"""Read the history of an offline W&B run from its ``run-*.wandb`` file (wandb writes no summary JSON offline).

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of chunks, each
``crc32 (4) | length (2) | type (1) | payload``; types FULL / FIRST / MIDDLE / LAST reassemble one protobuf Record.
"""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768


def _records(path: Path):
    data = Path(path).read_bytes()
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = payload if kind in (1, 2) else buf + payload
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def history(run_file: Path) -> list[dict]:
    """One dict per logged row: ``{key: value}``, nested values (histograms) as ``{key: {sub: value}}``."""
    rows = []
    for rec in _records(run_file):
        if rec.WhichOneof("record_type") != "history":
            continue
        row: dict = {}
        for item in rec.history.item:
            value = json.loads(item.value_json)
            if item.nested_key:
                node = row
                for k in item.nested_key[:-1]:
                    node = node.setdefault(k, {})
                node[item.nested_key[-1]] = value
            else:
                row[item.key] = value
        rows.append(row)
    return rows
