"""Fuzzing the readers: random and mutated bytes through the tar, image, video, caption, token-cache and checkpoint
readers. Each reader either returns a well-formed sample or raises ``BadSample`` (the pipeline skips and counts
it); the tar reader never raises and counts what it loses; the checkpoint reader raises an ``Exception`` with a
message, never anything else.

Bounded for CI: a few hundred examples per reader (seconds each), derandomized so CI runs the same examples
every time (run with ``--hypothesis-seed=<n>`` and without ``derandomize`` to explore further), and an address-space
limit so that a reader allocating what a damaged header claims fails the test instead of the machine.
"""

from __future__ import annotations

import io
import json
import random
import resource
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from grn.datamodules.bad_samples import BadSample, BadSampleCounter, Limits
from grn.datamodules.images import ClassImageDecoder, decode_image
from grn.datamodules.text import TextImageDecoder, TextVideoDecoder
from grn.datamodules.text_tokens import TextTokenDecoder, _npy
from grn.datamodules.token_shards import TokenDecoder, pack_tokens
from grn.datamodules.video import VideoDecoder, encode_mp4
from grn.datamodules.wds import shard_samples

LIMITS = Limits(max_image_pixels=1 << 20, max_frame_pixels=1 << 20)  # the same checks, smaller (faster) examples


def fuzz(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True, scope="module")
def bounded_address_space():
    """4 GiB of address space above what is mapped now, for the module's tests (Linux; elsewhere no limit)."""
    try:
        size = int(next(x for x in open("/proc/self/status") if x.startswith("VmSize")).split()[1]) << 10
    except (OSError, StopIteration):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + (4 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed with a few byte-level mutations: flips, overwrites, cuts, insertions, deletions, zeroed runs and
    copied blocks."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "zero", "copy"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 600))]
        elif op == "zero":
            n = draw(st.integers(1, 1024))
            data[pos : pos + n] = bytes(len(data[pos : pos + n]))
        elif op == "copy":
            n = draw(st.integers(1, 1024))
            data[draw(st.integers(0, len(data))) : 0] = data[pos : pos + n]
    return bytes(data)


def inputs(seeds: list[bytes], max_random: int = 2048):
    return st.one_of(st.binary(max_size=max_random), mutated(seeds))


def _picture(fmt: str, size=(20, 14)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = [_picture(f) for f in ("PNG", "JPEG", "WEBP", "GIF", "BMP")]
MP4 = encode_mp4(np.stack([np.full((16, 16, 3), 9 * i, np.uint8) for i in range(12)]), 12)
CAPTION = json.dumps({"long_caption": "a b", "text": "a", "tarsier2_caption": "c", "begin_frame_id": 0,
                      "end_frame_id": 12, "fps": 12, "height": 16, "width": 16}).encode()


def _bad(err: BadSample) -> None:
    event(f"skipped: {err.reason}")  # --hypothesis-show-statistics: which checks the examples reach


def _check(out: dict, key: str) -> None:
    event("decoded")
    x = out[key]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x.min() >= -1 and x.max() <= 1


# --------------------------------------------------------------------------------------------------- images
@fuzz(300)
@given(data=inputs(IMAGES), ext=st.sampled_from(["png", "jpg", "webp"]))
def test_image_reader(data, ext):
    rng = random.Random(0)
    for decoder, key in ((ClassImageDecoder(8, True, 10, LIMITS), "image"),
                         (TextImageDecoder(2, 8, 0.5, (0.5, 1.0, 2.0), limits=LIMITS), "image")):
        try:
            out = decoder({"__key__": "k", ext: data, "cls": b"3", "json": CAPTION}, rng)
        except BadSample as err:
            _bad(err)
            continue
        _check(out, key)
    try:
        image = decode_image({ext: data}, LIMITS)
    except BadSample:
        return
    assert image.mode == "RGB" and image.width * image.height <= LIMITS.max_image_pixels


# --------------------------------------------------------------------------------------------------- videos
@fuzz(150)
@given(data=inputs([MP4]), meta=st.sampled_from([CAPTION, b"{}"]))
def test_video_reader(data, meta):
    rng = random.Random(0)
    sample = {"__key__": "k", "mp4": data, "json": meta}
    for decoder in (VideoDecoder(5, 12, (16, 16), True, False, limits=LIMITS),
                    TextVideoDecoder(2, 8, 5, 12, (1.0,), limits=LIMITS),
                    TextVideoDecoder(2, 8, 5, 12, (1.0,), durations="per_clip", limits=LIMITS)):
        try:
            out = decoder(sample, rng)
        except BadSample as err:
            _bad(err)
            continue
        _check(out, "video")
        assert out["video"].shape[1] == 5


# ------------------------------------------------------------------------------------------ captions, json
FIELDS = ["long_caption", "text", "tarsier2_caption", "MiniCPM_V_2_6_caption", "quality_prompt", "fps",
          "begin_frame_id", "end_frame_id", "height", "width"]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
GOOD = {"long_caption": "a b", "text": "a", "tarsier2_caption": "c", "begin_frame_id": 0, "end_frame_id": 12,
        "fps": 12, "height": 16, "width": 16}
METAS = st.one_of(
    st.fixed_dictionaries({}, optional={k: VALUES for k in FIELDS}),               # every field, any value
    st.builds(lambda k, v: {**GOOD, k: v}, st.sampled_from(FIELDS), VALUES),         # one field changed
    VALUES,                                                                          # not even an object
)


@fuzz(300)
@given(meta=METAS, raw=st.none() | mutated([CAPTION]))
def test_caption_and_json_readers(meta, raw):
    text = raw if raw is not None else json.dumps(meta).encode()
    rng = random.Random(0)
    for decoder, key, sample in (
        (TextImageDecoder(2, 8, 0.5, (1.0,), limits=LIMITS), "image", {"png": IMAGES[0]}),
        (TextVideoDecoder(2, 8, 5, 12, (1.0,), limits=LIMITS), "video", {"mp4": MP4}),
        (TextVideoDecoder(2, 8, 5, 12, (1.0,), durations="per_clip", limits=LIMITS), "video", {"mp4": MP4}),
        (VideoDecoder(5, 12, (16, 16), False, False, limits=LIMITS), "video", {"mp4": MP4}),
    ):
        try:
            out = decoder({"__key__": "k", "json": text, **sample}, rng)
        except BadSample as err:
            _bad(err)
            continue
        _check(out, key)
        if "caption" in out:
            assert isinstance(out["caption"], str) and out["caption"]


# ------------------------------------------------------------------------------------------- token caches
TOK = pack_tokens(torch.randint(0, 16, (2, 3, 3), generator=torch.Generator().manual_seed(0)), 4)
FEATS = _npy(np.ones((3, 4), np.float16))
CACHED = json.dumps({"fields": {"long_caption": "a b", "text": "a"}, "captions": ["a b", "a"],
                     "lens": [2, 1]}).encode()
TEXT_META = {"hbq_rounds": 4, "latent_dim": 2, "text_dim": 4, "text_dtype": "float16"}


@fuzz(300)
@given(field=st.sampled_from(["tok", "json", "text.npy", "cls"]), data=st.data())
def test_token_cache_readers(field, data):
    """One field damaged at a time (the others intact), so every check downstream of it is reached too."""
    seeds = {"tok": [TOK], "json": [CACHED], "text.npy": [FEATS], "cls": [b"3"]}
    value = data.draw(inputs(seeds[field], 256), label=field)
    rng = random.Random(0)
    for decoder, sample in ((TokenDecoder(True, 10, [2, 3, 3], 4), {"tok": TOK, "tokflip": TOK, "cls": b"3"}),
                            (TextTokenDecoder("image", 0.5, TEXT_META), {"tok": TOK, "json": CACHED,
                                                                        "text.npy": FEATS})):
        if field not in sample:
            continue
        try:
            out = decoder({"__key__": "k", **sample, field: value}, rng)
        except BadSample as err:
            _bad(err)
            continue
        event("decoded")
        assert out["tokens"].dtype == torch.int64 and out["tokens"].shape[0] == 2
        assert 0 <= int(out["tokens"].min()) and int(out["tokens"].max()) < 16
        if "text" in out:
            assert out["text"].dtype == torch.float16 and out["text"].shape[1] == 4


# -------------------------------------------------------------------------------------------------- shards
def _tar(samples: list[dict], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for ext, body in sample.items():
                if ext != "__key__":
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size = len(body)
                    tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


SAMPLES = [{"__key__": f"s{i}", "cls": str(i).encode(), "png": IMAGES[0][: 200 + 300 * i]} for i in range(4)]
TARS = [_tar(SAMPLES), _tar(SAMPLES), _tar(SAMPLES, "w:gz")]  # plain tars twice as often: resync is theirs


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@fuzz(400)
@given(data=inputs(TARS, 4096), gz=st.booleans())
def test_tar_reader_counts_what_it_loses(scratch, data, gz):
    path = scratch / ("s.tar.gz" if gz else "s.tar")
    path.write_bytes(data)
    counter = BadSampleCounter(log_every_s=1e9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = list(shard_samples(iter([str(path)]), counter, max_member_bytes=1 << 16))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) and set(keys) <= {s["__key__"] for s in SAMPLES}
    for s in samples:
        assert all(isinstance(v, bytes) for k, v in s.items() if not k.startswith("__"))
    for reason, n in counter.counts.items():
        if n:
            event(f"counted: {reason}")
    event(f"{len(keys)} samples kept")
    if len(keys) < len(SAMPLES):
        assert sum(counter.counts.values()) >= 1, "samples lost without a count"


# ----------------------------------------------------------------------------------------------- checkpoints
def _checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3,
                "hyper_parameters": {"net": {"_target_": "grn.models.x", "dim": 4}}}, buf)
    return buf.getvalue()


CHECKPOINTS = [_checkpoint()]


def _read_checkpoint(scratch: Path, data: bytes):
    from grn.checkpoints import read_checkpoint

    path = scratch / "c.ckpt"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the pickle protocols it finds in garbage
        try:
            read_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - what the reader raises is the subject of these tests
            return err
    return None


@fuzz(200)
@given(data=inputs(CHECKPOINTS))
def test_checkpoint_reader_raises_only_exceptions(scratch, data):
    """Damaged checkpoints never crash the process or raise a BaseException (SystemExit, KeyboardInterrupt...)."""
    err = _read_checkpoint(scratch, data)
    assert err is None or str(err) or type(err).__name__  # reaching here: an Exception, caught


@settings(max_examples=200, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(data=inputs(CHECKPOINTS))
def test_checkpoint_reader_errors_are_one_clear_line(scratch, data):
    from grn.checkpoints import UnreadableCheckpointError, UnsafeCheckpointError

    err = _read_checkpoint(scratch, data)
    if err is not None:
        message = str(err)
        kinds = (UnsafeCheckpointError, UnreadableCheckpointError)
        assert isinstance(err, kinds), f"{type(err).__name__}: {message[:200]}"
        assert message and "\n" not in message, message[:300]
