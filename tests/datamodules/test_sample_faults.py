"""Samples of the wrong kind, through every reader the data path has, are skipped and counted under one reason
each (``data/bad_<reason>``); the good samples around them are all trained on and nothing raises.

Every field a decoder reads is tried: missing, of the wrong type, NaN/inf, negative, out of range, empty — in the
video json (``fps``, ``begin_frame_id``, ``end_frame_id``, ``height``, ``width``), the captions, the labels, the
media themselves (a PNG stored as ``.mp4``, an EPS stored as ``.png``), the class token cache and the text token
cache (tokens, caption json, features)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from grn.datamodules.bad_samples import BadSample
from grn.datamodules.images import ImageShardDataModule
from grn.datamodules.text import TextImageDataModule, TextVideoDataModule
from grn.datamodules.text_tokens import TextTokenShardDataModule, _npy
from grn.datamodules.token_shards import TokenShardDataModule, pack_tokens, unpack_tokens
from grn.datamodules.video import VideoShardDataModule, probe_video
from grn.datamodules.writers import write_shards

from shard_helpers import digit_png_samples, png_bytes, read_all, tiny_mp4

ONE_PASS = dict(batch_size=2, resampled=False, shuffle_buffer=0, drop_last=False)
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000  # json.loads: RecursionError, not ValueError


def _shard(tmp_path, samples) -> str:
    write_shards(samples, tmp_path, max_count=1000)
    return str(tmp_path / "shard-000000.tar")


def _image(fmt: str, size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------ videos
VIDEO_JSON = {  # json of a video sample -> the reason it is counted under
    "fps_string": ({"fps": "fast"}, "wrong_type"),
    "end_null": ({"end_frame_id": None}, "wrong_type"),
    "begin_string": ({"begin_frame_id": "zero"}, "wrong_type"),
    "fps_bool": ({"fps": True}, "wrong_type"),
    "fps_list": ({"fps": [12]}, "wrong_type"),
    "fps_nan": ('{"fps": NaN}', "bad_value"),
    "fps_inf": ('{"fps": Infinity}', "bad_value"),
    "fps_zero": ({"fps": 0}, "bad_value"),
    "fps_negative": ({"fps": -12}, "bad_value"),
    "begin_negative": ({"begin_frame_id": -3}, "bad_value"),
    "end_huge_int": ('{"end_frame_id": 1' + "0" * 400 + "}", "bad_value"),   # beyond float range
    "end_1e400": ('{"end_frame_id": 1e400}', "bad_value"),                   # parses as inf
    "end_before_begin": ({"begin_frame_id": 8, "end_frame_id": 4}, "bad_value"),
    "begin_after_video": ({"begin_frame_id": 500, "end_frame_id": 600}, "bad_value"),
    "fps_subnormal": ({"begin_frame_id": 0, "end_frame_id": 12, "fps": 5e-324}, "bad_value"),  # end = 12 / fps = inf
    "json_deep": (DEEP_JSON, "wrong_type"),
    "json_list": ("[1, 2]", "wrong_type"),
    "json_not_utf8": (b"\xff\xfe{}", "wrong_type"),
    "json_empty": (b"", "wrong_type"),
}
VIDEO_MEDIA = {  # mp4 member -> reason
    "png_as_mp4": (png_bytes(16, 16), "decode_video"),     # PyAV opens it: no duration (was a TypeError)
    "empty_mp4": (b"", "decode_video"),
    "garbage_mp4": (b"\x00\x00\x00\x18ftypmp42" + bytes(100), "decode_video"),
}


def test_video_fields_of_the_wrong_kind_are_counted(tmp_path):
    good = tiny_mp4()
    samples = [{"__key__": f"ok{i}", "mp4": good, "json": {"begin_frame_id": 0, "end_frame_id": 12, "fps": 12}}
               for i in range(3)]
    samples += [{"__key__": k, "mp4": good, "json": j} for k, (j, _) in VIDEO_JSON.items()]
    samples += [{"__key__": k, "mp4": m} for k, (m, _) in VIDEO_MEDIA.items()]
    samples += [{"__key__": "no_mp4", "json": {}}, {"__key__": "ok_nojson", "mp4": good}]
    dm = VideoShardDataModule(train_shards=_shard(tmp_path, samples), num_frames=5, fps=12, size=(16, 16),
                              **ONE_PASS)
    keys, bad = read_all(dm)
    assert sorted(keys) == ["ok0", "ok1", "ok2", "ok_nojson"]
    expected: dict[str, int] = {"missing_key": 1}
    for _, reason in [*VIDEO_JSON.values(), *VIDEO_MEDIA.values()]:
        expected[reason] = expected.get(reason, 0) + 1
    assert bad == expected


def test_each_video_field_gets_its_own_reason():
    """The same cases one by one, so a reason is pinned to its case (not just the totals)."""
    from grn.datamodules.video import VideoDecoder

    decoder, good, rng = VideoDecoder(5, 12, (16, 16), False, False), tiny_mp4(), __import__("random").Random(0)
    for name, (meta, reason) in VIDEO_JSON.items():
        raw = meta if isinstance(meta, bytes) else (meta if isinstance(meta, str) else json.dumps(meta)).encode()
        with pytest.raises(BadSample) as err:
            decoder({"__key__": name, "mp4": good, "json": raw}, rng)
        assert err.value.reason == reason, name
    for name, (media, reason) in VIDEO_MEDIA.items():
        with pytest.raises(BadSample) as err:
            decoder({"__key__": name, "mp4": media}, rng)
        assert err.value.reason == reason, name


def test_png_stored_as_mp4_is_a_bad_sample_not_a_type_error():
    with pytest.raises(BadSample) as err:
        probe_video(png_bytes(16, 16))
    assert err.value.reason == "decode_video" and "duration" in str(err.value)


@pytest.mark.parametrize(("cls", "reason"), [(b"seven", "wrong_type"), (b"-1", "bad_value"), (b"3", "bad_value"),
                                             (b"", "wrong_type"), (b"1_0", "wrong_type"), (b"1.0", "wrong_type"),
                                             (b"\xd9\xa3", "wrong_type"), (b"9" * 40, "wrong_type")])
def test_labels_of_the_wrong_kind(cls, reason):
    from grn.datamodules.images import decode_label

    with pytest.raises(BadSample) as err:
        decode_label({"cls": cls}, num_classes=3)
    assert err.value.reason == reason
    assert decode_label({"cls": b" 2\n"}, num_classes=3) == 2


def test_text_video_fields_are_counted(tmp_path):
    good = tiny_mp4(24, 12, (16, 32))
    ok = {"tarsier2_caption": "a fade", "begin_frame_id": 0, "end_frame_id": 24, "fps": 12, "height": 16,
          "width": 32}
    cases = {  # json changes -> reason
        "height_string": ({"height": "tall"}, "wrong_type"),
        "width_zero": ({"width": 0}, "bad_value"),
        "height_nan": ('NaN', "bad_value"),
        "ratio_overflow": ({"height": 1e300, "width": 1e-300}, "bad_value"),
        "caption_int": ({"tarsier2_caption": 5}, "wrong_type"),
        "caption_empty": ({"tarsier2_caption": "  "}, "missing_key"),
        "caption_missing": ({"tarsier2_caption": None}, "wrong_type"),
        "quality_list": ({"quality_prompt": ["sharp"]}, "wrong_type"),
        "minicpm_dict": ({"MiniCPM_V_2_6_caption": {"a": 1}}, "wrong_type"),
        "fps_string": ({"fps": "fast"}, "wrong_type"),
        "fps_subnormal": ({"fps": 5e-324}, "bad_value"),  # per_clip: 24 / fps = inf seconds (an OverflowError)
    }
    samples = [{"__key__": f"ok{i}", "mp4": good, "json": ok} for i in range(2)]
    for key, (change, _) in cases.items():
        if change == "NaN":
            text = json.dumps(ok).replace('"height": 16', '"height": NaN')
        else:
            text = json.dumps({**ok, **change})
        samples.append({"__key__": key, "mp4": good, "json": text})
    for per_clip in (False, True):
        out = tmp_path / str(per_clip)
        dm = TextVideoDataModule(train_shards=_shard(out, samples), num_frames=5, fps=8, pn=4, stride=8,
                                 durations="per_clip" if per_clip else "fixed", **ONE_PASS)
        keys, bad = read_all(dm)
        assert sorted(keys) == ["ok0", "ok1"]
        assert bad == {"wrong_type": 6, "bad_value": 4, "missing_key": 1}


def test_images_and_captions_of_the_wrong_kind_are_counted(tmp_path):
    digits = list(digit_png_samples(3))
    caption = {"long_caption": "a digit", "text": "digit"}
    samples = [{**d, "json": caption} for d in digits]
    samples += [
        {"__key__": "long_caption_int", "png": digits[0]["png"], "json": {"long_caption": 3}},        # wrong_type
        {"__key__": "text_list", "png": digits[0]["png"], "json": {"long_caption": "x", "text": ["y"]}},  # wrong
        {"__key__": "no_caption", "png": digits[0]["png"], "json": {"long_caption": "", "text": ""}},  # missing
        {"__key__": "json_deep", "png": digits[0]["png"], "json": DEEP_JSON},                          # wrong_type
        {"__key__": "eps_as_png", "png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", "json": caption},
        {"__key__": "tiff_as_jpg", "jpg": _image("TIFF"), "json": caption},                           # decode_image
        {"__key__": "empty_png", "png": b"", "json": caption},                                         # decode_image
        {"__key__": "wide", "png": png_bytes(3000, 1), "json": caption},                              # aspect_ratio
        {"__key__": "huge", "png": png_bytes(100_000, 100_000, header_only=True), "json": caption},   # too_large
        {"__key__": "gif_as_png", "png": _image("GIF"), "json": caption},                             # fine
    ]
    dm = TextImageDataModule(train_shards=_shard(tmp_path, samples), pn=2, stride=8, **ONE_PASS)
    keys, bad = read_all(dm)
    assert sorted(keys) == sorted([d["__key__"] for d in digits] + ["gif_as_png"])
    assert bad == {"wrong_type": 3, "missing_key": 1, "decode_image": 3, "aspect_ratio": 1, "too_large": 1}

    classes = [{k: v for k, v in s.items() if k != "json"} | {"cls": 1} for s in samples[3:] if "png" in s
               or "jpg" in s]
    classes += [{**digits[0], "__key__": "cls_range", "cls": 10}, {**digits[0], "__key__": "cls_nan", "cls": "nan"}]
    dm = ImageShardDataModule(train_shards=_shard(tmp_path / "c", digits + classes), image_size=8, num_classes=10,
                              **ONE_PASS)
    keys, bad = read_all(dm)
    # the caption cases carry a good image and a label: the class pipeline trains on them
    assert sorted(keys) == sorted([d["__key__"] for d in digits] + ["long_caption_int", "text_list", "no_caption",
                                                                     "json_deep", "gif_as_png"])
    assert bad == {"decode_image": 3, "aspect_ratio": 1, "too_large": 1, "bad_value": 1, "wrong_type": 1}


# ------------------------------------------------------------------------------------------------ token caches
def _token_cache(tmp_path, samples, **meta) -> str:
    write_shards(samples, tmp_path, prefix="train", max_count=1000)
    info = {"hbq_rounds": 4, "latent_dim": 2, "token_shape": [2, 3, 3], "num_classes": 5, "flip": False,
            "splits": {"train": {"shards": ["train-000000.tar"], "num_samples": len(samples)}}, **meta}
    (tmp_path / "meta.json").write_text(json.dumps(info))
    return str(tmp_path)


def _tok(shape=(2, 3, 3), rounds=4) -> bytes:
    return pack_tokens(torch.randint(0, 2**rounds, shape, generator=torch.Generator().manual_seed(0)), rounds)


def test_class_token_cache_fields_are_counted(tmp_path):
    header = b"GRNT" + bytes([4, 3])
    samples = [{"__key__": f"ok{i}", "tok": _tok(), "cls": i % 5} for i in range(3)] + [
        {"__key__": "other_rounds", "tok": _tok(rounds=3), "cls": 1},            # wrong_type (M=3 in an M=4 cache)
        {"__key__": "other_shape", "tok": _tok((2, 4, 4)), "cls": 1},            # wrong_type
        {"__key__": "empty_dim", "tok": header + bytes(12), "cls": 1},           # wrong_type (shape (0, 0, 0))
        {"__key__": "no_dims", "tok": b"GRNT" + bytes([4, 0]), "cls": 1},        # wrong_type (ndim 0)
        {"__key__": "overflow", "tok": header + b"\xff" * 12 + b"\x00", "cls": 1},  # too_large, nothing unpacked
        {"__key__": "short", "tok": _tok()[:-1], "cls": 1},                      # wrong_type
        {"__key__": "no_tok", "cls": 1},                                         # missing_key
        {"__key__": "cls_range", "tok": _tok(), "cls": 7},                       # bad_value
        {"__key__": "cls_text", "tok": _tok(), "cls": "one"},                    # wrong_type
    ]
    dm = TokenShardDataModule(_token_cache(tmp_path, samples), flip=False, **ONE_PASS)
    keys, bad = read_all(dm)
    assert sorted(keys) == ["ok0", "ok1", "ok2"]
    assert bad == {"wrong_type": 6, "too_large": 1, "missing_key": 1, "bad_value": 1}


def test_unpack_never_trusts_the_shape_in_the_header():
    # dims whose product overflows int64 (np.prod wrapped around; math.prod does not)
    data = b"GRNT" + bytes([1, 4]) + (2**32 - 1).to_bytes(4, "little") * 4 + bytes(8)
    with pytest.raises(BadSample) as err:
        unpack_tokens(data)
    assert err.value.reason == "too_large"


def _npy_header(shape, dtype="<f2") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_text_token_cache_fields_are_counted(tmp_path):
    feats = _npy(np.ones((5, 4), np.float16))
    caps = {"fields": {"long_caption": "a b c", "text": "ab"}, "captions": ["a b c", "ab"], "lens": [3, 2]}

    def sample(key, **change):
        return {"__key__": key, "tok": _tok(), "json": {**caps, **change.pop("json", {})}, "text.npy": feats,
                **change}

    nan = np.ones((5, 4), np.float16)
    nan[1, 1] = np.nan
    samples = [sample(f"ok{i}") for i in range(3)] + [
        sample("fields_list", json={"fields": ["a"]}),                          # wrong_type
        sample("captions_str", json={"captions": "a b c"}),                     # wrong_type
        sample("lens_float", json={"lens": [3.0, 2]}),                          # wrong_type
        sample("lens_negative", json={"lens": [6, -1]}),                        # bad_value
        sample("lens_short", json={"lens": [5]}),                               # bad_value
        sample("json_deep") | {"json": DEEP_JSON},                              # wrong_type
        sample("f64", **{"text.npy": _npy(np.ones((5, 4)))}),                   # wrong_type (cache is float16)
        sample("other_dim", **{"text.npy": _npy(np.ones((5, 3), np.float16))}),  # wrong_type
        sample("huge_header", **{"text.npy": _npy_header((10**12, 4)) + bytes(40)}),  # wrong_type, no allocation
        sample("object", **{"text.npy": _npy_header((2,), "|O") + bytes(16)}),  # wrong_type
        sample("nan", **{"text.npy": _npy(nan)}),                               # bad_value
        sample("tok_dim", tok=_tok((3, 3, 3))),                                 # wrong_type (latent_dim 2)
    ]
    cache = _token_cache(tmp_path, samples, kind="image", text_dim=4, text_dtype="float16")
    (tmp_path / "null.npy").write_bytes(_npy(np.zeros((1, 4), np.float16)))
    dm = TextTokenShardDataModule(cache, **ONE_PASS)
    keys, bad = read_all(dm)
    assert sorted(keys) == ["ok0", "ok1", "ok2"]
    assert bad == {"wrong_type": 9, "bad_value": 3}


def test_jsonl_lines_of_the_wrong_kind_are_skipped_and_counted(tmp_path):
    from grn.datamodules.writers import iter_jsonl_media

    (tmp_path / "a.png").write_bytes(png_bytes(4, 4))
    lines = ['{"image_path": "a.png", "long_caption": "x"}', "[1, 2]", '{"image_path": null}',
             '{"video_path": 3}', '{"image_path": "a\\u0000b.png"}', '{"image_path": ""}', "{broken"]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    stats: dict[str, int] = {}
    out = list(iter_jsonl_media([tmp_path / "m.jsonl"], stats=stats))
    assert len(out) == 1 and stats == {"bad_json": 2, "bad_path": 3, "missing_media": 1}
