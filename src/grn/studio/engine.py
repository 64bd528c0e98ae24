"""The studio's work, without the page: one loaded pipeline and the calls each tab makes — a class grid, a
revision of a painted region, the step-by-step refinement of one sample, text-to-image / video and
image-to-video.

Every call returns plain data (uint8 pictures, int64 labels, numbers) that :mod:`grn.studio.app` puts into
components. A call's ``progress(done, total)`` is driven by the sampler's per-step hook; nothing here knows
about Gradio. Bad input is a :class:`~grn.studio.images.StudioInputError` with a message for the page.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grn import hbq
from grn.sampling.config import SamplerConfig, migrate_keys
from grn.studio import images as im
from grn.studio.results import Grid, LiveFrame, Picture, Revision  # noqa: F401 (Picture etc. are part of this API)
from grn.studio.steps import StepRecorder

Progress = Callable[[int, int], None]


def stored_sampler(ckpt: str | Path) -> dict[str, Any]:
    """The sampler settings a training checkpoint stored (its decoding defaults), today's key names; ``{}``
    when it stores none or is not a single checkpoint file."""
    path = Path(ckpt)
    if not path.is_file():
        return {}
    try:
        from grn.checkpoints import read_checkpoint

        hp = read_checkpoint(path, mmap=True).get("hyper_parameters", {}) or {}
        return {
            k: v
            for k, v in migrate_keys(hp.get("sampler")).items()
            if k in SamplerConfig.__dataclass_fields__
        }
    except Exception:  # a foreign or official file: the loader reports those; here the defaults just stay
        return {}


class Studio:
    """A loaded pipeline and the tabs' calls. ``kind`` is ``c2i`` (class ids) or ``text`` (prompts).

    Args:
        pipe: a :class:`~grn.pipeline.GRNPipeline` or :class:`~grn.text_pipeline.TextPipeline`.
        defaults: the decoding settings the page starts with (usually the checkpoint's,
            :func:`stored_sampler`).
        height, width, frames: a text model's default output size (a class model's size is fixed).
    """

    def __init__(
        self,
        pipe: Any,
        defaults: dict[str, Any] | None = None,
        height: int = 32,
        width: int = 32,
        frames: int = 5,
        name: str = "",
    ):
        self.pipe = pipe
        self.kind = "c2i" if hasattr(pipe, "generator") else "text"
        self.net = pipe.generator if self.kind == "c2i" else pipe.net
        self.tokenizer = pipe.tokenizer
        self.defaults = SamplerConfig.build(defaults or {})
        self.height, self.width, self.frames = int(height), int(width), int(frames)
        self.name = name
        self.lock = threading.Lock()  # one sampling call at a time: the CPU is the bottleneck anyway

    @classmethod
    def load(
        cls,
        ckpt: str | Path,
        tokenizer_ckpt: str | Path | None = None,
        ema: str | None = "ema1",
        device: str = "cpu",
        **kwargs: Any,
    ) -> Studio:
        """The studio on a checkpoint, loaded through :meth:`grn.pipeline.GRNPipeline.from_pretrained`."""
        from grn.pipeline import GRNPipeline

        pipe = GRNPipeline.from_pretrained(ckpt, tokenizer_ckpt=tokenizer_ckpt, ema=ema, device=device)
        return cls(pipe, stored_sampler(ckpt), name=str(ckpt), **kwargs)

    # ------------------------------------------------------------------------------------------------ facts
    @property
    def stride(self) -> int:
        return self.tokenizer.spatial_stride

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of a picture: fixed for a class model, the default output size for a text model."""
        if self.kind == "c2i":
            return (self.pipe.image_size, self.pipe.image_size)
        return (self.height, self.width)

    @property
    def num_classes(self) -> int:
        return int(self.net.num_classes) if self.kind == "c2i" else 0

    def scale(self, size: tuple[int, int] | None = None) -> int:
        return im.display_scale(max(size or self.image_size))

    def sampler(self, **settings: Any) -> SamplerConfig:
        """The page's decoding settings on top of the defaults; a bad value is a StudioInputError."""
        try:
            cfg = self.defaults.replace(**{k: v for k, v in settings.items() if v is not None})
        except (ValueError, TypeError) as err:
            raise im.StudioInputError(str(err)) from err
        if cfg.schedule == "complexity_aware" and not (
            0 < cfg.complexity_warmup_steps < cfg.complexity_min_steps <= cfg.complexity_max_steps
        ):
            raise im.StudioInputError(
                "complexity-aware sampling needs 0 < warm-up steps < min steps <= max steps, got "
                f"{cfg.complexity_warmup_steps}, {cfg.complexity_min_steps}, {cfg.complexity_max_steps}"
            )
        if cfg.schedule == "complexity_aware_official" and not (
            0 < cfg.complexity_warmup_steps < cfg.complexity_min_steps <= cfg.num_steps
        ):
            raise im.StudioInputError(
                "the official complexity-aware sampler needs 0 < warm-up steps < min steps <= steps, got "
                f"{cfg.complexity_warmup_steps}, {cfg.complexity_min_steps}, {cfg.num_steps}"
            )
        return cfg

    def check_classes(self, classes: Sequence[int]) -> list[int]:
        out = [int(c) for c in classes]
        if not out:
            raise im.StudioInputError("pick at least one class")
        bad = [c for c in out if not 0 <= c < self.num_classes]
        if bad:
            raise im.StudioInputError(f"class ids must be in 0..{self.num_classes - 1}, got {bad}")
        return out

    @staticmethod
    def check_prompts(prompts: str | Sequence[str]) -> list[str]:
        lines = prompts.splitlines() if isinstance(prompts, str) else list(prompts)
        out = [p.strip() for p in lines if p and p.strip()]
        if not out:
            raise im.StudioInputError("write a prompt (one per line for several samples)")
        return out

    def check_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.stride
        h, w = int(height), int(width)
        if h < s or w < s or h % s or w % s:
            raise im.StudioInputError(
                f"height and width must be multiples of {s} (the tokenizer's stride), got {w}x{h}"
            )
        return h, w

    def check_frames(self, frames: int) -> int:
        f, st = int(frames), self.tokenizer.temporal_stride
        if f < 1 + st or (f - 1) % st:
            raise im.StudioInputError(
                f"frames must be 1 + {st}·k with k >= 1 ({1 + st}, {1 + 2 * st}, ...), got {f}"
            )
        return f

    # ------------------------------------------------------------------------------------------------ calls
    def _run(
        self,
        fn: Callable[..., Any],
        cfg: SamplerConfig,
        progress: Progress | None,
        on_step: Callable | None = None,
        **kwargs: Any,
    ):
        """One pipeline call under the lock, with the progress hook (steps of the slowest sample)."""
        total = cfg.max_steps

        def hook(step) -> None:
            if on_step is not None:
                on_step(step)
            if progress is not None:
                progress(step.index + 1, total)

        with self.lock:
            try:
                return fn(sampler=cfg, on_step=hook, **kwargs)
            except ValueError as err:  # a setting the loop rejects (checked before any heavy work)
                raise im.StudioInputError(str(err)) from err

    def _pictures(self, out, about: Sequence[str], conditions: Sequence[int | str]) -> list[Picture]:
        pixels = im.to_uint8(out.images)
        labels = out.labels.cpu().numpy()
        steps = out.steps.tolist() if out.steps is not None else [None] * len(pixels)
        return [Picture(p, l, a, s, c) for p, l, a, s, c in zip(pixels, labels, about, steps, conditions)]

    def generate(
        self,
        classes: Sequence[int],
        seed: int = 0,
        cfg: SamplerConfig | None = None,
        progress: Progress | None = None,
    ) -> Grid:
        """Class-to-image: one picture per class id (same seed -> same grid)."""
        if self.kind != "c2i":
            raise im.StudioInputError("this checkpoint is a text model: use the text-to-image tab")
        classes = self.check_classes(classes)
        cfg = cfg or self.defaults
        t0 = time.perf_counter()
        out = self._run(self.pipe, cfg, progress, classes=classes, seed=int(seed))
        seconds = time.perf_counter() - t0
        pictures = self._pictures(out, [f"class {c}" for c in classes], classes)
        return Grid(pictures, seconds, [p.steps for p in pictures])

    def text_to_image(
        self,
        prompts: str | Sequence[str],
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str = "",
        cfg: SamplerConfig | None = None,
        progress: Progress | None = None,
    ) -> Grid:
        prompts = self.check_prompts(prompts)
        size = self.check_size(height or self.height, width or self.width)
        out, seconds = self._run_text("t2i", prompts, seed, size, 1, negative_prompt, cfg, progress)
        pictures = self._pictures(out, prompts, prompts)
        return Grid(pictures, seconds, [p.steps for p in pictures])

    def video(
        self,
        prompts: str | Sequence[str],
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        frames: int | None = None,
        negative_prompt: str = "",
        first_frame: np.ndarray | None = None,
        cfg: SamplerConfig | None = None,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, float, list]:
        """Text-to-video (or image-to-video with ``first_frame``, uint8 ``[H, W, 3]``) -> (uint8 clips
        ``[B, T, H, W, 3]``, seconds, steps per clip)."""
        prompts = self.check_prompts(prompts)
        h, w = self.check_size(height or self.height, width or self.width)
        f = self.check_frames(frames or self.frames)
        image = None
        if first_frame is not None:
            image = im.from_uint8(im.fit_frame(first_frame, h, w, "the first frame"))
        task = "i2v" if image is not None else "t2v"
        out, seconds = self._run_text(task, prompts, seed, (h, w), f, negative_prompt, cfg, progress, image)
        return im.to_uint8(out.images), seconds, out.steps.tolist()

    def _run_text(self, task: str, prompts: list[str], seed: int, size: tuple[int, int], frames: int,
                  negative_prompt: str, cfg: SamplerConfig | None, progress: Progress | None, image=None):
        """One text-pipeline call of ``task`` at ``size`` (H, W) -> (its output, seconds)."""
        t0 = time.perf_counter()
        out = self._run(self._text(task), cfg or self.defaults, progress, prompts=prompts, seed=int(seed),
                        height=size[0], width=size[1], frames=frames, negative_prompt=negative_prompt or "",
                        image=image)
        return out, time.perf_counter() - t0

    def _text(self, task: str):
        pipe = self.pipe

        def call(**kwargs):
            old = pipe.task
            pipe.task = task
            try:
                return pipe(**kwargs)
            finally:
                pipe.task = old

        return call

    def picture_from_upload(self, array: np.ndarray, what: str = "the uploaded image") -> Picture:
        """An upload (any array the page gives) -> a :class:`Picture` at the model's size, with its tokens."""
        pixels = (
            im.fit_picture(array, self.image_size[0], what)
            if self.kind == "c2i"
            else im.fit_frame(array, *self.image_size, what)
        )
        return Picture(pixels, self.encode(pixels), f"{what} (encoded)")

    @torch.no_grad()
    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``[H, W, 3]`` -> index labels ``[d, h, w]`` (the tokenizer's encoding)."""
        x = im.from_uint8(pixels).to(self.pipe.device)
        return self.tokenizer.encode(x, target="index")[0].cpu().numpy()

    @torch.no_grad()
    def decode(self, labels: torch.Tensor) -> np.ndarray:
        """Labels in the network's layout ``[1, C, h, w]`` -> uint8 ``[H, W, 3]`` (the live view's)."""
        if self.net.target == "bits":
            labels = hbq.bit_labels_to_index_labels(labels, self.net.hbq_rounds)
        pixels = self.tokenizer.decode_labels(labels.to(self.pipe.device), target="index").clamp(-1, 1)
        return im.to_uint8(pixels)[0]

    def revise(
        self,
        source: Picture,
        mask: np.ndarray,
        seed: int = 0,
        cls: int | None = None,
        prompt: str | None = None,
        negative_prompt: str = "",
        cfg: SamplerConfig | None = None,
        progress: Progress | None = None,
    ) -> Revision:
        """Regenerate the token cells under ``mask`` (bool ``[H, W]`` at the model's size) of ``source``,
        under class ``cls`` (class models) or ``prompt`` (text models); every label outside stays exactly the
        source's."""
        mask = np.asarray(mask, dtype=bool)
        h, w = source.pixels.shape[:2]
        if mask.shape != (h, w):
            raise im.StudioInputError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image {w}x{h}")
        if not mask.any():
            raise im.StudioInputError("the mask is empty: paint the region to regenerate on the image first")
        region = im.token_grid(mask, self.stride)
        cfg = cfg or self.defaults
        labels = torch.from_numpy(np.ascontiguousarray(source.labels))[None]
        m = torch.from_numpy(mask)[None, None]
        t0 = time.perf_counter()
        if self.kind == "c2i":
            if cls is None:
                raise im.StudioInputError("choose the class to regenerate the region with")
            cls = self.check_classes([cls])[0]
            out = self._run(
                self.pipe, cfg, progress, classes=[cls], seed=int(seed), init_labels=labels, mask=m
            )
            about, condition = f"class {cls}, revised", cls
        else:
            prompts = self.check_prompts(prompt or "")
            out = self._run(
                self._text("t2i"),
                cfg,
                progress,
                prompts=prompts[:1],
                seed=int(seed),
                height=h,
                width=w,
                frames=1,
                negative_prompt=negative_prompt or "",
                init_labels=labels,
                mask=m,
            )
            about, condition = f"{prompts[0]}, revised", prompts[0]
        seconds = time.perf_counter() - t0
        result = self._pictures(out, [about], [condition])[0]
        inside = np.broadcast_to(region, source.labels.shape)
        same = result.labels == source.labels
        return Revision(
            source=source,
            result=result,
            mask=mask,
            region=region,
            seconds=seconds,
            changed_inside=int((~same & inside).sum()),
            labels_inside=int(inside.sum()),
            same_outside=int((same & ~inside).sum()),
            labels_outside=int((~inside).sum()),
        )

    def live(
        self,
        seed: int = 0,
        cls: int | None = None,
        prompt: str | None = None,
        negative_prompt: str = "",
        cfg: SamplerConfig | None = None,
    ) -> Iterator[LiveFrame]:
        """Refine one sample and yield a :class:`LiveFrame` after every step (the sampler runs in a thread;
        its ``on_step`` hook hands each step over), then a last frame with ``done`` and the final picture."""
        cfg = cfg or self.defaults
        if self.kind == "c2i":
            if cls is None:
                raise im.StudioInputError("choose a class to watch")
            kwargs = dict(classes=self.check_classes([cls]), seed=int(seed))
            fn = self.pipe
        else:
            kwargs = dict(
                prompts=self.check_prompts(prompt or "")[:1],
                seed=int(seed),
                height=self.height,
                width=self.width,
                frames=1,
                negative_prompt=negative_prompt or "",
            )
            fn = self._text("t2i")
        frames: queue.Queue = queue.Queue()
        recorder = StepRecorder(row=0, listener=lambda r: frames.put(("step", r)))
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["out"] = self._run(fn, cfg, None, on_step=recorder, **kwargs)
            except BaseException as err:  # handed to the page's thread, raised there
                outcome["error"] = err
            finally:
                frames.put(("end", None))

        thread = threading.Thread(target=work, name="grn-studio-live", daemon=True)
        thread.start()
        last = None
        while True:
            kind, record = frames.get()
            if kind == "end":
                break
            last = LiveFrame(
                record, self.decode(record.labels), cfg.max_steps, records=list(recorder.records)
            )
            yield last
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        final = self._pictures(outcome["out"], ["live"], [cls if self.kind == "c2i" else prompt])[0]
        if last is None:
            raise im.StudioInputError("the sampler ran no step")
        yield LiveFrame(
            last.record, final.pixels, cfg.max_steps, done=True, final=final, records=list(recorder.records)
        )
