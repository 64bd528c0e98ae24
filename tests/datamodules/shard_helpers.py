"""Helpers shared by the data-pipeline tests (importable: conftest puts this folder on sys.path)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from grn.datamodules.bad_samples import BAD_REASONS
from grn.datamodules.builtin import load_digits_split

from tiny_nets import tiny_tokenizer_ckpt  # noqa: F401 - re-exported: the data tests import it from here


def digit_png_samples(n: int, start: int = 0):
    """``n`` real digits as ``{"__key__", "png", "cls"}`` samples (16×16 RGB PNG), keys ``d000000``…"""
    x, y = load_digits_split("train", image_size=16)
    for i in range(start, start + n):
        arr = ((x[i].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        yield {"__key__": f"d{i:06d}", "png": buf.getvalue(), "cls": int(y[i])}


def bad_counts(**nonzero: int) -> dict[str, int]:
    """Every bad-sample reason with its count: ``nonzero`` ones as given, the rest 0 (``dm.bad_samples`` lists
    them all)."""
    unknown = set(nonzero) - set(BAD_REASONS)
    assert not unknown, f"not bad-sample reasons: {unknown}"
    return {r: nonzero.get(r, 0) for r in BAD_REASONS}


def read_all(dm) -> tuple[list[str], dict[str, int]]:
    """One pass over ``dm``'s train loader: the keys of every batch, in order, and the non-zero bad-sample counts."""
    keys = [k for batch in dm.train_dataloader() for k in dm.record(batch)["key"]]
    return keys, {r: n for r, n in dm.bad_samples.items() if n}


def png_bytes(width: int, height: int, header_only: bool = False) -> bytes:
    """A black RGB PNG of ``width x height``, compressed row by row (a 12000² image costs kilobytes, never its
    pixels). ``header_only``: the image data holds one row, so the header claims far more than the file has."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    comp, row, rows = zlib.compressobj(9), bytes(1 + 3 * width), []
    for _ in range(1 if header_only else height):
        rows.append(comp.compress(row))
    data = b"".join(rows) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def tiny_mp4(num_frames: int = 12, fps: float = 12, size: tuple[int, int] = (16, 16)) -> bytes:
    """A small real mp4: frame i is a flat grey of value 10·i."""
    from grn.datamodules.video import encode_mp4

    frames = np.stack([np.full((*size, 3), 10 * i, np.uint8) for i in range(num_frames)])
    return encode_mp4(frames, fps)


def key_recorder(check=None):
    """A one-parameter LightningModule that records the sample keys it trains on, in order (``.keys``);
    ``check(batch)`` runs on every training batch. Its loss reads the batch's ``image``, ``video`` or ``tokens``."""
    import lightning as L
    import torch

    class KeyRecorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.keys: list[str] = []

        def training_step(self, batch, batch_idx):
            assert "_data" not in batch  # the DataModule removed the pipeline's metadata
            if check is not None:
                check(batch)
            self.keys.extend(batch["key"])
            x = next(batch[k] for k in ("image", "video", "tokens") if k in batch)
            return (x.float().mean() * self.w - 1) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return KeyRecorder()


def fit_keys(dm, max_steps, ckpt_dir, ckpt_path=None, every=None, check=None):
    """Train a :func:`key_recorder` on ``dm`` for ``max_steps`` (checkpoints ``{step}.ckpt`` in ``ckpt_dir`` every
    ``every`` steps; resumes from ``ckpt_path``); returns the keys it trained on."""
    import lightning as L

    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=every, save_top_k=-1,
                                                     filename="{step}")] if every else []
    model = key_recorder(check)
    L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=bool(every), callbacks=callbacks,
              num_sanity_val_steps=0, limit_val_batches=0).fit(model, datamodule=dm, ckpt_path=ckpt_path,
                                                              weights_only=True)
    return model.keys


def logged_values(run_dir, name: str) -> list[float]:
    """Every value the run's CSV log (the one ``metrics.csv`` under ``run_dir``) holds in column ``name``."""
    (path,) = Path(run_dir).rglob("metrics.csv")
    header, *rows = path.read_text().splitlines()
    idx = header.split(",").index(name)
    return [float(r.split(",")[idx]) for r in rows if r.split(",")[idx]]
