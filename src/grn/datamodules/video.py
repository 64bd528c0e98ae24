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
import random
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F

from grn.datamodules.bad_samples import BadSample
from grn.datamodules.images import decode_label
from grn.datamodules.wds import ShardDataModule

__all__ = [
    "VideoShardDataModule",
    "check_num_frames",
    "decode_clip",
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


def probe_video(data: bytes) -> dict[str, float]:
    """``{"fps", "num_frames", "duration"}`` of the first video stream, from the container header."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        duration = float(stream.duration * stream.time_base) if stream.duration else container.duration / 1e6
        frames = stream.frames or int(round(duration * fps))
    return {"fps": fps, "num_frames": frames, "duration": duration}


def decode_clip(data: bytes, start_s: float, num_frames: int, fps: float, stats: dict | None = None) -> np.ndarray:
    """Frames on screen at ``start_s + j / fps``, j < ``num_frames`` → uint8 ``[T, H, W, 3]`` RGB.

    Seeks to the key frame at or before ``start_s`` and stops after the clip. ``stats["decoded"]`` (when given)
    receives the number of frames actually decoded. Raises :class:`BadSample` (``decode_video``) when the bytes
    do not decode or the video ends before the clip does.
    """
    targets = start_s + np.arange(num_frames) / fps
    out: list[np.ndarray | None] = [None] * num_frames
    decoded = 0
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            src_fps = float(stream.average_rate or stream.guessed_rate or fps)
            t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            tol = 0.5 / src_fps  # a target within half a source frame of a frame's time shows that frame
            if start_s > 0:
                container.seek(int((start_s + t0) / stream.time_base), stream=stream, backward=True, any_frame=False)
            cache: list = [None, None]  # (frame, its RGB array): a repeated frame is converted once

            def rgb(frame) -> np.ndarray:
                if cache[0] is not frame:
                    cache[0], cache[1] = frame, frame.to_ndarray(format="rgb24")
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
    except (av.FFmpegError, IndexError, ValueError, OSError) as err:
        raise BadSample("decode_video", f"{type(err).__name__}: {err}") from None
    if stats is not None:
        stats["decoded"] = decoded
    if j < num_frames:
        raise BadSample("decode_video", f"video ends before the clip: {j}/{num_frames} frames from {start_s:.3f}s")
    return np.stack(out)


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
    if "json" not in sample:
        return {}
    try:
        meta = json.loads(sample["json"])
    except (ValueError, TypeError, UnicodeDecodeError):
        raise BadSample("wrong_type", "json is not valid JSON") from None
    if not isinstance(meta, dict):
        raise BadSample("wrong_type", f"json is a {type(meta).__name__}, not an object")
    return meta


def clip_from_sample(sample: dict[str, Any], meta: dict[str, Any], num_frames: int, fps: float,
                     size: tuple[int, int], rng: random.Random, flip: bool) -> torch.Tensor:
    """One clip of a video sample → float ``[3, T, H, W]`` in [-1, 1]; the start is drawn from ``rng``."""
    data = sample.get("mp4")
    if data is None:
        raise BadSample("missing_key", f"no mp4 among {sorted(sample)}")
    if not isinstance(data, (bytes, bytearray)):
        raise BadSample("wrong_type", f"mp4 is {type(data).__name__}, not bytes")
    try:
        info = probe_video(data)
    except (av.FFmpegError, IndexError, ValueError, OSError, ZeroDivisionError) as err:
        raise BadSample("decode_video", f"{type(err).__name__}: {err}") from None
    src_fps = float(meta.get("fps") or info["fps"])
    begin = float(meta.get("begin_frame_id", 0)) / src_fps
    end = float(meta["end_frame_id"]) / src_fps if "end_frame_id" in meta else info["duration"]
    span = (num_frames - 1) / fps  # from the first to the last sampled time
    room = min(end, info["duration"]) - 1.0 / src_fps - begin - span
    if room < -1e-6:
        raise BadSample("decode_video", f"clip of {span:.2f}s does not fit in {end - begin:.2f}s")
    start = begin + rng.random() * max(room, 0.0)
    frames = decode_clip(bytes(data), start, num_frames, fps)          # uint8 [T, H, W, 3]
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()       # [T, 3, H, W] in 0..255
    video = resize_cover_crop(video, size)
    if flip and rng.random() < 0.5:
        video = video.flip(-1)
    return (video / 127.5 - 1.0).clamp_(-1, 1).permute(1, 0, 2, 3).contiguous()  # [3, T, H, W]


class VideoDecoder:
    """Picklable decoder for video shards (mp4 + optional json frame range + optional cls)."""

    def __init__(self, num_frames: int, fps: float, size: tuple[int, int], flip: bool, labelled: bool,
                 num_classes: int | None = None) -> None:
        self.num_frames, self.fps, self.size = check_num_frames(num_frames), float(fps), tuple(size)
        self.flip, self.labelled, self.num_classes = flip, labelled, num_classes

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        meta = sample_meta(sample)
        label = decode_label(sample, num_classes=self.num_classes) if self.labelled else None
        out = {"video": clip_from_sample(sample, meta, self.num_frames, self.fps, self.size, rng, self.flip),
               "key": sample["__key__"]}
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
                            self.num_classes)
