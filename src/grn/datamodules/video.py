"""Video shards: mp4 bytes decoded with PyAV, clips of ``1 + 4k`` frames at a target fps, found by seeking.

webdataset's own video decoder goes through torchvision's video API, which torchvision 0.29 no longer ships, so
decoding here is PyAV directly. A clip is ``num_frames`` frames at ``fps`` starting at a time inside the sample's
frame range (``json``: ``begin_frame_id``, ``end_frame_id``, ``fps``, as in the official jsonl lines; default the
whole video). The decoder seeks to the key frame before the clip start and decodes only up to the clip end — the
official loader decodes from frame 0 every time (facts §5.2). Each target time takes the source frame on screen
at that time (nearest frame, so a 30 fps source sampled at 16 fps drops frames and a 12 fps one repeats them).

Batches: ``{"video": float32 [B, 3, T, H, W] in [-1, 1], "label": int64 [B] (when the shards have cls), "key"}``.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F

from grn.datamodules.bad_samples import BadSample, Limits
from grn.datamodules.images import decode_label
from grn.datamodules.wds import ShardDataModule

__all__ = [
    "VideoShardDataModule",
    "check_num_frames",
    "decode_clip",
    "decode_clip_cropped",
    "encode_mp4",
    "probe_video",
    "resize_cover_crop",
]


def check_num_frames(num_frames: int) -> int:
    """The causal tokenizer maps ``1 + 4k`` frames to ``1 + k`` latents; anything else would lose frames."""
    if num_frames < 1 or (num_frames - 1) % 4:
        raise ValueError(f"num_frames must be 1 + 4k (1, 5, 9, 13, 17, ...), got {num_frames}")
    return int(num_frames)


def encode_mp4(frames: np.ndarray, fps: float | Fraction, codec: str = "libx264", gop: int = 8,
               crf: int = 18) -> bytes:
    """uint8 ``[T, H, W, 3]`` RGB frames (H, W even) → mp4 bytes, a key frame every ``gop`` frames."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H and W must be even for yuv420p, got {frames.shape[1:3]}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"g": str(gop), "crf": str(crf), "preset": "veryfast"} if codec == "libx264" else {}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _video_bytes(data: Any) -> bytes:
    if not isinstance(data, (bytes, bytearray)):
        raise BadSample("wrong_type", f"mp4 is {type(data).__name__}, not bytes")
    if not data:
        raise BadSample("decode_video", "mp4 is empty")
    return bytes(data)


def _positive(value: Any, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise BadSample("decode_video", f"{what} is {value}")
    return value


def probe_video(data: bytes, limits: Limits | None = None) -> dict[str, float]:
    """``{"fps", "num_frames", "duration", "width", "height"}`` of the first video stream, from the container
    header. Bytes that are not a video with a frame rate and a duration raise :class:`BadSample`
    (``decode_video``); with ``limits``, frames over them raise ``too_large`` / ``aspect_ratio``."""
    data = _video_bytes(data)
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise BadSample("decode_video", f"no video stream in the {container.format.name} container")
            stream = container.streams.video[0]
            fps = _positive(stream.average_rate or stream.guessed_rate or 0, "the frame rate")
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1e6
            else:
                raise BadSample("decode_video", f"no duration in the {container.format.name} container")
            duration = _positive(duration, "the duration")
            frames = int(stream.frames or round(duration * fps))
            width, height = int(stream.width or 0), int(stream.height or 0)
    except BadSample:
        raise
    except Exception as err:  # noqa: BLE001 - PyAV raises many types on damaged input (FFmpegError, OSError, ...)
        raise BadSample("decode_video", f"{type(err).__name__}: {err}") from None
    if limits is not None:
        limits.check_size(width, height, "video frame", limits.max_frame_pixels, "max_frame_pixels")
    return {"fps": fps, "num_frames": frames, "duration": duration, "width": width, "height": height}


def _clip_frames(data: bytes, start_s: float, num_frames: int, fps: float, stats: dict | None,
                 convert: Callable[[np.ndarray], Any], limits: Limits | None) -> list:
    """``convert(rgb24 array)`` of the frames on screen at ``start_s + j / fps`` (see :func:`decode_clip`); each
    source frame is converted once, as it is decoded, so only one full-resolution frame is held at a time."""
    targets = start_s + np.arange(num_frames) / fps
    out: list = [None] * num_frames
    decoded = 0
    j = 0
    data = _video_bytes(data)
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise BadSample("decode_video", "no video stream")
            stream = container.streams.video[0]
            src_fps = float(stream.average_rate or stream.guessed_rate or fps)
            t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            tol = 0.5 / src_fps  # a target within half a source frame of a frame's time shows that frame
            if start_s > 0:
                container.seek(int((start_s + t0) / stream.time_base), stream=stream, backward=True, any_frame=False)
            cache: list = [None, None]  # (frame, converted): a repeated frame is converted once

            def rgb(frame):
                if cache[0] is not frame:
                    if limits is not None:
                        limits.check_size(frame.width, frame.height, "decoded video frame", limits.max_frame_pixels,
                                          "max_frame_pixels")
                    cache[0], cache[1] = frame, convert(frame.to_ndarray(format="rgb24"))
                return cache[1]

            j, prev, prev_t = 0, None, 0.0
            for frame in container.decode(stream):
                decoded += 1
                t = float(frame.pts * stream.time_base) - t0 if frame.pts is not None else prev_t
                # targets before this frame show the previous one (this one if the seek overshot the first)
                while j < num_frames and targets[j] + tol < t:
                    out[j] = rgb(prev if prev is not None else frame)
                    j += 1
                if j >= num_frames:
                    break
                prev, prev_t = frame, t
            # targets after the last frame: it stays on screen for one source-frame duration
            while j < num_frames and prev is not None and targets[j] <= prev_t + 1.0 / src_fps + 1e-6:
                out[j] = rgb(prev)
                j += 1
    except BadSample:
        raise
    except Exception as err:  # noqa: BLE001 - PyAV raises many types on damaged input (FFmpegError, OSError, ...)
        raise BadSample("decode_video", f"{type(err).__name__}: {err}") from None
    if stats is not None:
        stats["decoded"] = decoded
    if j < num_frames:
        raise BadSample("decode_video", f"video ends before the clip: {j}/{num_frames} frames from {start_s:.3f}s")
    if len({tuple(a.shape) for a in out}) > 1:
        raise BadSample("decode_video", f"the frame size changes inside the clip: "
                                        f"{sorted({tuple(a.shape) for a in out})}")
    return out


def decode_clip(data: bytes, start_s: float, num_frames: int, fps: float, stats: dict | None = None,
                limits: Limits | None = None) -> np.ndarray:
    """Frames on screen at ``start_s + j / fps``, j < ``num_frames`` → uint8 ``[T, H, W, 3]`` RGB.

    Seeks to the key frame at or before ``start_s`` and stops after the clip. ``stats["decoded"]`` (when given)
    receives the number of frames actually decoded; ``limits`` bounds every decoded frame (``too_large`` /
    ``aspect_ratio``). Raises :class:`BadSample` (``decode_video``) when the bytes do not decode or the video
    ends before the clip does.
    """
    return np.stack(_clip_frames(data, start_s, num_frames, fps, stats, lambda a: a, limits))


def decode_clip_cropped(data: bytes, start_s: float, num_frames: int, fps: float, size: tuple[int, int],
                        limits: Limits | None = None) -> torch.Tensor:
    """``resize_cover_crop(decode_clip(...) as float, size)`` — float ``[T, 3, H, W]`` in 0..255 — with each frame
    resized and cropped as it is decoded: the clip never holds full-resolution frames (a 17-frame 2048² clip
    would be 0.9 GB of floats), only one frame at a time. The result is the same."""

    def convert(rgb: np.ndarray) -> torch.Tensor:
        return resize_cover_crop(torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), size)[0]

    return torch.stack(_clip_frames(data, start_s, num_frames, fps, None, convert, limits))


def resize_cover_crop(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float ``[T, 3, H, W]`` → ``[T, 3, h, w]``: scale (bilinear, antialiased) to cover ``size``, crop the centre."""
    h, w = size
    scale = max(h / frames.shape[-2], w / frames.shape[-1])
    new = (max(h, round(frames.shape[-2] * scale)), max(w, round(frames.shape[-1] * scale)))
    if new != tuple(frames.shape[-2:]):
        frames = F.interpolate(frames, size=new, mode="bilinear", antialias=True, align_corners=False)
    top, left = (new[0] - h) // 2, (new[1] - w) // 2
    return frames[..., top : top + h, left : left + w]


def sample_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's ``json`` as a dict (``{}`` without one); ``wrong_type`` where it is not a JSON object."""
    if "json" not in sample:
        return {}
    try:
        meta = json.loads(sample["json"])
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
        raise BadSample("wrong_type", "json is not valid JSON") from None
    if not isinstance(meta, dict):
        raise BadSample("wrong_type", f"json is a {type(meta).__name__}, not an object")
    return meta


def meta_number(meta: dict[str, Any], key: str, *, positive: bool = False) -> float | None:
    """``meta[key]`` as a float, None where absent: ``wrong_type`` unless a JSON number (``null``, strings and
    booleans are not), ``bad_value`` where NaN, infinite, negative, or zero with ``positive``."""
    if key not in meta:
        return None
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadSample("wrong_type", f"json {key}={str(value)[:40]!r} is a {type(value).__name__}, not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise BadSample("bad_value", f"json {key} is out of range") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise BadSample("bad_value", f"json {key}={number} (must be finite and {'>' if positive else '>='} 0)")
    return number


def frame_range(meta: dict[str, Any], info: dict[str, float] | None = None) -> tuple[float, float, float]:
    """``(begin_s, end_s, src_fps)`` of a sample's frame range (``begin_frame_id``, ``end_frame_id``, ``fps`` in
    its json; default the whole video of ``info``, as :func:`probe_video` returns). Wrong or impossible values
    raise :class:`BadSample` (``wrong_type`` / ``bad_value``)."""
    src_fps = meta_number(meta, "fps", positive=True) or (info["fps"] if info else None)
    begin_id = meta_number(meta, "begin_frame_id") or 0.0
    end_id = meta_number(meta, "end_frame_id")
    if src_fps is None or (end_id is None and info is None):
        raise ValueError("frame_range needs the probed video info where the json has no fps / end_frame_id")
    if end_id is not None and end_id <= begin_id:
        raise BadSample("bad_value", f"json end_frame_id={end_id} <= begin_frame_id={begin_id}")
    begin, end = begin_id / src_fps, end_id / src_fps if end_id is not None else info["duration"]
    if not math.isfinite(end):  # a tiny fps: frame ids beyond any duration
        raise BadSample("bad_value", f"json frame range {begin_id}..{end_id} at fps={src_fps} is not a time")
    return begin, end, src_fps


def clip_from_sample(sample: dict[str, Any], meta: dict[str, Any], num_frames: int, fps: float,
                     size: tuple[int, int], rng: random.Random, flip: bool,
                     limits: Limits = Limits()) -> torch.Tensor:
    """One clip of a video sample → float ``[3, T, H, W]`` in [-1, 1]; the start is drawn from ``rng``. Frames
    are resized to ``size`` as they are decoded; ``limits`` bounds the frame size."""
    data = sample.get("mp4")
    if data is None:
        raise BadSample("missing_key", f"no mp4 among {sorted(sample)}")
    info = probe_video(data, limits)
    begin, end, src_fps = frame_range(meta, info)
    if begin >= info["duration"]:
        raise BadSample("bad_value", f"the frame range starts at {begin:.2f}s, the video lasts "
                                     f"{info['duration']:.2f}s")
    span = (num_frames - 1) / fps  # from the first to the last sampled time
    room = min(end, info["duration"]) - 1.0 / src_fps - begin - span
    if room < -1e-6:
        raise BadSample("decode_video", f"clip of {span:.2f}s does not fit in {end - begin:.2f}s")
    start = begin + rng.random() * max(room, 0.0)
    video = decode_clip_cropped(data, start, num_frames, fps, size, limits)  # [T, 3, H, W] in 0..255
    if flip and rng.random() < 0.5:
        video = video.flip(-1)
    return (video / 127.5 - 1.0).clamp_(-1, 1).permute(1, 0, 2, 3).contiguous()  # [3, T, H, W]


class VideoDecoder:
    """Picklable decoder for video shards (mp4 + optional json frame range + optional cls)."""

    def __init__(self, num_frames: int, fps: float, size: tuple[int, int], flip: bool, labelled: bool,
                 num_classes: int | None = None, limits: Limits = Limits()) -> None:
        self.num_frames, self.fps, self.size = check_num_frames(num_frames), float(fps), tuple(size)
        self.flip, self.labelled, self.num_classes, self.limits = flip, labelled, num_classes, limits

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        meta = sample_meta(sample)
        label = decode_label(sample, num_classes=self.num_classes) if self.labelled else None
        clip = clip_from_sample(sample, meta, self.num_frames, self.fps, self.size, rng, self.flip, self.limits)
        out = {"video": clip, "key": sample["__key__"]}
        if label is not None:
            out["label"] = torch.tensor(label, dtype=torch.int64)
        return out


class VideoShardDataModule(ShardDataModule):
    """Video shards for the tokenizer (and video token caches).

    Args:
        num_frames: frames per clip, ``1 + 4k`` (17 → 5 latent frames).
        fps: sampling rate of the clip (the official T2V uses 16).
        size: ``[H, W]`` of the clip (cover-resize then centre crop).
        flip: random horizontal flip (train only).
        labelled: the shards carry ``cls`` and batches get ``label``.
        **kwargs: pipeline settings of :class:`~grn.datamodules.wds.ShardDataModule`.
    """

    def __init__(self, num_frames: int = 17, fps: float = 16.0, size: tuple[int, int] = (256, 256),
                 flip: bool = False, labelled: bool = False, num_classes: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_frames, self.fps = check_num_frames(num_frames), float(fps)
        self.size = (int(size[0]), int(size[1]))
        self.flip, self.labelled, self.num_classes = bool(flip), bool(labelled), num_classes

    def transform_spec(self) -> dict[str, Any]:
        return {**super().transform_spec(), "num_frames": self.num_frames, "fps": self.fps, "size": list(self.size)}

    def decoder(self, split: str) -> VideoDecoder:
        return VideoDecoder(self.num_frames, self.fps, self.size, self.flip and split == "train", self.labelled,
                            self.num_classes, self.limits)
