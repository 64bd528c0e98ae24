"""Memory is bounded: samples over the size limits are skipped, from their headers, before they cost memory; video
frames are resized as they are decoded.

Before these limits, a 10 KB 1×300000 PNG grew training to 4.2 GB RSS (the ADM crop's resize: 256 × 76.8M
pixels), a 12000² PNG by 1.1 GB, a 4.7 MB gzip shard with a 1 GiB member by 1 GiB (the whole member was read),
and a 17-frame mp4 of 2048² frames by 1.2 GB (full-resolution float frames). The crafted inputs are read by the
real DataModules in a subprocess under an address-space limit, and the growth of its peak RSS is measured per case
(Linux ``/proc/self/clear_refs`` resets the peak between cases).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from grn.datamodules.bad_samples import BadSample, Limits
from grn.datamodules.images import decode_image
from grn.datamodules.video import encode_mp4, probe_video
from grn.datamodules.writers import write_shards

from shard_helpers import digit_png_samples, png_bytes, tiny_mp4

MAX_GROWTH_MB = 200

CHILD = r"""
import json, resource, sys

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM", "VmSize")}

from grn.datamodules.images import ImageShardDataModule
from grn.datamodules.text import TextImageDataModule
from grn.datamodules.video import VideoShardDataModule

# a broken guard must fail the test, not the machine: 3 GiB of address space above what is mapped now
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, ((status()["VmSize"] + 3072) << 20, hard))

one_pass = dict(batch_size=1, resampled=False, shuffle_buffer=0, drop_last=False)
make = {
    "image": lambda s: ImageShardDataModule(train_shards=s, image_size=256, num_classes=10, **one_pass),
    "text_image": lambda s: TextImageDataModule(train_shards=s, pn="0.06M", **one_pass),
    "video": lambda s: VideoShardDataModule(train_shards=s, num_frames=5, fps=16, size=(64, 64), **one_pass),
}
results = {}
for name, kind, shard in json.loads(sys.argv[1]):
    dm = make[kind](shard)
    try:
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS to the current RSS
        reset = True
    except OSError:
        reset = False
    before, out = status()["VmRSS"], {"keys": [], "shapes": [], "error": None}
    try:
        for batch in dm.train_dataloader():
            batch = dm.record(batch)
            out["keys"] += batch["key"]
            out["shapes"].append(list(batch["video" if kind == "video" else "image"].shape))
    except BaseException as err:  # MemoryError under the limit is what a missing guard looks like
        out["error"] = f"{type(err).__name__}: {str(err)[:200]}"
    out["growth_mb"] = status()["VmHWM"] - before if reset else None
    out["bad"] = {r: n for r, n in dm.bad_samples.items() if n}
    results[name] = out
print("RESULTS" + json.dumps(results))
"""


class _Zeros:
    """A file of ``n`` zero bytes, read in pieces."""

    def __init__(self, n: int) -> None:
        self.n = n

    def read(self, k: int = -1) -> bytes:
        k = self.n if k < 0 else min(k, self.n)
        self.n -= k
        return bytes(k)


def _gzip_shard_with_a_huge_member(path, good: dict) -> None:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        members = [("big.cls", io.BytesIO(b"1"), 1), ("big.png", _Zeros(Limits.max_member_bytes + 1),
                                                      Limits.max_member_bytes + 1)]
        members += [(f"{good['__key__']}.{ext}", io.BytesIO(data), len(data))
                    for ext, data in (("cls", str(good["cls"]).encode()), ("png", good["png"]))]
        for name, f, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, f)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    good = next(digit_png_samples(1))
    cases = []

    def shard(name, kind, samples):
        write_shards(samples, root / name)
        cases.append((name, kind, str(root / name / "shard-000000.tar")))

    shard("wide", "image", [{"__key__": "wide", "png": png_bytes(300_000, 1), "cls": 1}, good])
    shard("huge", "image", [{"__key__": "huge", "png": png_bytes(12_000, 12_000), "cls": 1}, good])
    caption = {"long_caption": "a digit"}
    shard("wide_text", "text_image", [{"__key__": "wide", "png": png_bytes(300_000, 1), "json": caption},
                                      {**good, "json": caption}])
    (root / "gz").mkdir()
    _gzip_shard_with_a_huge_member(root / "gz" / "shard.tar.gz", good)
    cases.append(("gz", "image", str(root / "gz" / "shard.tar.gz")))
    shard("video", "video", [{"__key__": "v", "mp4": encode_mp4(np.zeros((5, 2048, 2048, 3), np.uint8), 16)}])
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True, text=True,
                         timeout=300)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULTS")), None)
    assert line is not None, run.stderr[-3000:]
    return json.loads(line[len("RESULTS"):])


@pytest.mark.parametrize(("case", "reason"), [("wide", "aspect_ratio"), ("huge", "too_large"),
                                              ("wide_text", "aspect_ratio"), ("gz", "too_large")])
def test_oversized_samples_are_skipped_before_they_cost_memory(measured, case, reason):
    out = measured[case]
    assert out["error"] is None and out["keys"] == ["d000000"] and out["bad"] == {reason: 1}
    if out["growth_mb"] is None:
        pytest.skip("/proc/self/clear_refs is not writable here: peak RSS not measured")
    assert out["growth_mb"] < MAX_GROWTH_MB, out


def test_video_frames_are_resized_while_decoding(measured):
    out = measured["video"]
    assert out["error"] is None and out["keys"] == ["v"] and out["bad"] == {}
    assert out["shapes"] == [[1, 3, 5, 64, 64]]
    if out["growth_mb"] is None:
        pytest.skip("/proc/self/clear_refs is not writable here: peak RSS not measured")
    assert out["growth_mb"] < MAX_GROWTH_MB, out  # 5 float frames of 2048² alone would be 252 MB


def test_limits_are_checked_from_the_headers():
    limits = Limits(max_image_pixels=100, max_frame_pixels=200, max_aspect_ratio=4)
    for png, reason in ((png_bytes(11, 10), "too_large"), (png_bytes(9, 2), "aspect_ratio"),
                        (png_bytes(100_000, 100_000, header_only=True), "too_large")):
        with pytest.raises(BadSample) as err:
            decode_image({"png": png}, limits)
        assert err.value.reason == reason
    assert decode_image({"png": png_bytes(10, 10)}, limits).size == (10, 10)
    with pytest.raises(BadSample) as err:
        probe_video(tiny_mp4(size=(16, 16)), limits)  # 256 pixels > 200
    assert err.value.reason == "too_large"
    for bad in ({"max_member_bytes": 0}, {"max_aspect_ratio": 0.5}, {"max_image_pixels": "many"}):
        with pytest.raises(ValueError, match="data.max_"):
            Limits(**bad)


def test_limits_come_from_the_data_config(compose_cfg, digit_shards):
    from hydra.utils import instantiate

    for name in ("imagenet", "video", "text_image", "text_video"):
        cfg = compose_cfg("train", [f"data={name}", f"data.train_shards='{digit_shards}'",
                                    "data.max_image_pixels=1234", "data.max_member_bytes=4096"])
        dm = instantiate(cfg.data)
        assert dm.limits == Limits(max_member_bytes=4096, max_image_pixels=1234)
        # limits that differ from the defaults change the token-cache key (they decide which samples exist)
        assert dm.transform_spec()["limits"] == {"max_member_bytes": 4096, "max_image_pixels": 1234}
