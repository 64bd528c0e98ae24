"""The studio page's state and callbacks: :class:`Page` holds the loaded :class:`~grn.studio.engine.Studio` and turns
each tab's inputs into its outputs; :func:`page_errors` makes every bad input a message in the page (``gr.Error``),
never a traceback. The layout that wires them to components is :mod:`grn.studio.app`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the page is served locally

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from grn.studio import images as im  # noqa: E402
from grn.studio.engine import Picture, Studio  # noqa: E402
from grn.studio.steps import refinement_plot, state_map  # noqa: E402

log = logging.getLogger("grn.studio")

# the shared decoding controls after the seed, in the order the page passes their values to every callback
SETTING_NAMES = ("steps", "schedule", "temperature", "cfg_scale", "cfg_lo", "cfg_hi", "selection", "revise",
                 "warmup", "alpha", "k", "b", "tmin", "tmax")


def page_errors(fn):
    """A callback whose user errors (:class:`StudioInputError`, ``ValueError``) become ``gr.Error`` messages
    in the page; anything else is logged with its traceback on the server and shown as one line."""

    def convert(err: Exception) -> gr.Error:
        if isinstance(err, gr.Error):
            return err
        if isinstance(err, ValueError):
            return gr.Error(" ".join(str(err).split()), print_exception=False)
        log.exception("studio callback %s failed", fn.__name__)
        return gr.Error(
            f"{type(err).__name__}: {' '.join(str(err).split())} (details in the server log)",
            print_exception=False,
        )

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise convert(err) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise convert(err) from None

    return wrapper


def same_picture(source: Picture | None, pixels: np.ndarray, tolerance: int = 2) -> bool:
    """Whether the editor still shows ``source`` (its pixels within ``tolerance`` levels: the canvas round
    trip may round), so that its own tokens are the ones kept."""
    return (
        source is not None
        and source.pixels.shape == pixels.shape
        and int(np.abs(source.pixels.astype(np.int16) - pixels.astype(np.int16)).max()) <= tolerance
    )


def progress_hook(progress: gr.Progress, what: str):
    return lambda done, total: progress((done, total), desc=f"{what}: step {done}/{total}", unit="steps")


class Page:
    """The components and callbacks of one studio page (built by :func:`build`)."""

    def __init__(self, studio: Studio, workdir: str | Path | None = None):
        self.studio = studio
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="grn-studio-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._files = 0

    # -------------------------------------------------------------------------------------------- helpers
    def big(self, pixels: np.ndarray) -> np.ndarray:
        return im.upscale(pixels, self.studio.scale(pixels.shape[:2]))

    def editor_value(self, picture: Picture | None) -> dict[str, Any] | None:
        if picture is None:
            return None
        big = self.big(picture.pixels)
        return {"background": big, "layers": [], "composite": big}

    def new_file(self, name: str) -> Path:
        self._files += 1
        folder = self.workdir / f"{self._files:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def cfg(self, *values):
        """The sampler config from the settings controls' values, in :data:`SETTING_NAMES` order."""
        v = dict(zip(SETTING_NAMES, values, strict=True))
        lo, hi = float(v["cfg_lo"]), float(v["cfg_hi"])
        if lo > hi:
            raise im.StudioInputError(
                f"the guidance interval is empty: from {lo} to {hi}; make 'from' <= 'to'"
            )
        return self.studio.sampler(
            num_steps=int(v["steps"]),
            schedule=v["schedule"],
            temperature=float(v["temperature"]),
            cfg_scale=float(v["cfg_scale"]),
            cfg_interval=(lo, hi),
            selection=v["selection"],
            revise=bool(v["revise"]),
            complexity_warmup_steps=int(v["warmup"]),
            alpha=float(v["alpha"]),
            k=float(v["k"]),
            b=float(v["b"]),
            complexity_min_steps=int(v["tmin"]),
            complexity_max_steps=int(v["tmax"]),
        )

    def source_from_editor(self, value: dict | None, source: Picture | None) -> tuple[Picture, np.ndarray]:
        """The editor's picture and painted mask (model size). The picture is the stored ``source`` (its own
        tokens) when the editor still shows it, else the editor's background, encoded as an upload."""
        if not value or value.get("background") is None:
            raise im.StudioInputError("no image to revise: generate one and send it here, or upload one")
        background = np.asarray(value["background"])
        size = self.studio.image_size
        pixels = (
            im.fit_picture(background, size[0], "the image in the editor")
            if self.studio.kind == "c2i"
            else im.fit_frame(background, *size, "the image in the editor")
        )
        if same_picture(source, pixels):
            picture = source
        else:  # dropped into the editor, or changed there: the tokens are the tokenizer's encoding of it
            picture = Picture(pixels, self.studio.encode(pixels), "the editor's image, encoded")
        mask = im.editor_mask(value.get("layers"), pixels.shape[:2], background, value.get("composite"))
        return picture, mask

    # ------------------------------------------------------------------------------------------ callbacks
    @staticmethod
    def summary(grid, what: str) -> str:
        n = len(grid.pictures)
        steps = ", ".join(str(s) for s in grid.steps)
        return (
            f"**{n} {what}{'s' if n != 1 else ''} in {grid.seconds:.2f} s** "
            f"({grid.seconds / max(n, 1):.2f} s "
            f"each) · refinement steps per sample: {steps}"
        )

    def gallery_items(self, pictures: list[Picture]):
        return [(self.big(p.pixels), f"{p.about} · {p.steps} steps") for p in pictures]

    def generate(self, classes, per_class, seed, *settings, progress=gr.Progress()):
        cfg = self.cfg(*settings)
        ids = [int(c) for c in (classes or [])]
        ids = [c for c in ids for _ in range(max(1, int(per_class or 1)))]
        grid = self.studio.generate(ids, int(seed), cfg, progress_hook(progress, "refining"))
        return self.gallery_items(grid.pictures), self.summary(grid, "image"), grid.pictures, None

    def text_to_image(self, prompts, negative, height, width, seed, *settings, progress=gr.Progress()):
        cfg = self.cfg(*settings)
        grid = self.studio.text_to_image(
            prompts, int(seed), int(height), int(width), negative, cfg, progress_hook(progress, "refining")
        )
        return self.gallery_items(grid.pictures), self.summary(grid, "image"), grid.pictures, None

    @staticmethod
    def select(evt: gr.SelectData):
        return evt.index

    def send(self, pictures: list[Picture] | None, index: int | None):
        if not pictures:
            raise im.StudioInputError("generate a grid first, then click a sample and send it")
        picture = pictures[int(index or 0)]
        overlay = im.grid_overlay(picture.pixels, None, self.studio.stride, self.studio.scale())
        if self.studio.kind == "c2i":  # the class dropdown starts at the sample's class; the prompt is unused
            cls, prompt = str(picture.condition), ""
        else:
            cls, prompt = None, str(picture.condition)
        return (
            self.editor_value(picture),
            picture,
            overlay,
            cls,
            prompt,
            f"Source: {picture.about} (its own tokens). Paint the region to regenerate, then press "
            f"Regenerate.",
            gr.Tabs(selected="revise"),
        )

    def upload(self, file):
        if file is None:
            raise im.StudioInputError("no file was uploaded")
        path = file if isinstance(file, (str, Path)) else getattr(file, "name", file)
        picture = self.studio.picture_from_upload(im.read_picture(path), Path(path).name)
        overlay = im.grid_overlay(picture.pixels, None, self.studio.stride, self.studio.scale())
        return (
            self.editor_value(picture),
            picture,
            overlay,
            f"Source: {Path(path).name}, encoded by the tokenizer. Paint the region to regenerate.",
        )

    def preview(self, value, source):
        """The token grid the current painting rounds to, drawn over the image (while painting)."""
        try:
            picture, mask = self.source_from_editor(value, source)
        except im.StudioInputError:
            return gr.update()
        cells = im.token_grid(mask, self.studio.stride)
        return im.grid_overlay(picture.pixels, cells, self.studio.stride, self.studio.scale())

    def revise(self, value, source, cls, prompt, negative, seed, *settings, progress=gr.Progress()):
        cfg = self.cfg(*settings)
        picture, mask = self.source_from_editor(value, source)
        rev = self.studio.revise(
            picture,
            mask,
            int(seed),
            cls=None if cls in (None, "") else int(cls),
            prompt=prompt,
            negative_prompt=negative or "",
            cfg=cfg,
            progress=progress_hook(progress, "revising"),
        )
        overlay = im.grid_overlay(picture.pixels, rev.region, self.studio.stride, self.studio.scale())
        h, w = rev.region.shape
        cells = int(rev.region.sum())
        verdict = (
            "identical, bit for bit" if rev.outside_identical else "NOT identical (a bug: please report)"
        )
        text = (
            f"**Revised in {rev.seconds:.2f} s** ({rev.result.steps} steps) from {picture.about}. The mask "
            f"({int(mask.sum())} model pixels) was rounded up to **{cells} of {h * w} token cells** "
            f"(magenta in "
            f"the token grid). Outside them: {rev.same_outside} of {rev.labels_outside} labels {verdict}; "
            f"inside: {rev.changed_inside} of {rev.labels_inside} labels changed."
        )
        npz = rev.npz(self.new_file("revision_tokens.npz"))
        return self.big(rev.result.pixels), overlay, text, str(npz), rev.result

    def continue_from(self, result: Picture | None):
        if result is None:
            raise im.StudioInputError("regenerate first: there is no result to continue from")
        overlay = im.grid_overlay(result.pixels, None, self.studio.stride, self.studio.scale())
        return self.editor_value(result), result, overlay, "Source: the last result (its own tokens)."

    def live(self, cls, prompt, negative, seed, *settings):
        cfg = self.cfg(*settings)
        studio = self.studio
        scale = studio.scale()
        frames = []
        for frame in studio.live(
            int(seed),
            cls=None if cls in (None, "") else int(cls),
            prompt=prompt,
            negative_prompt=negative or "",
            cfg=cfg,
        ):
            rec = frame.record
            cell = studio.stride * scale
            colours = im.upscale(state_map(rec.codes), cell)
            if not frame.done:
                frames.append((colours, f"step {rec.index + 1}"))
            plot = refinement_plot(frame.records, frame.total_steps)
            status = (
                f"step {rec.index + 1} of at most {frame.total_steps}: input t = {rec.keep_prob:.3f}, next "
                f"t = {rec.next_keep_prob:.3f}, entropy {rec.entropy:.3f}"
            )
            if frame.done:
                status = f"**done in {len(frame.records)} steps**; " + status
            yield (
                colours,
                im.upscale(frame.picture, scale),
                plot,
                status,
                (frames if frame.done else gr.update()),
            )

    def clips(self, prompts, negative, height, width, frames, seed, settings, first, progress):
        from grn.datamodules.video import encode_mp4

        cfg = self.cfg(*settings)
        clips, seconds, steps = self.studio.video(
            prompts,
            int(seed),
            int(height),
            int(width),
            int(frames),
            negative,
            first,
            cfg,
            progress_hook(progress, "refining"),
        )
        scale = self.studio.scale((int(height), int(width)))
        tiled = np.stack(
            [
                im.tile([im.upscale(c[t], scale) for c in clips], columns=min(4, len(clips)))
                for t in range(clips.shape[1])
            ]
        )
        tiled = tiled[:, : tiled.shape[1] // 2 * 2, : tiled.shape[2] // 2 * 2]
        path = self.new_file("clips.mp4")
        path.write_bytes(encode_mp4(np.ascontiguousarray(tiled), 4))
        strip = [(im.upscale(clips[0, t], scale), f"frame {t}") for t in range(clips.shape[1])]
        text = (
            f"**{len(clips)} clip(s) of {clips.shape[1]} frames in {seconds:.2f} s** · refinement steps per "
            f"clip: {', '.join(str(s) for s in steps)}"
        )
        return str(path), strip, text

    def video(self, prompts, negative, height, width, frames, seed, *settings, progress=gr.Progress()):
        return self.clips(prompts, negative, height, width, frames, seed, settings, None, progress)

    def image_to_video(
        self, image, prompts, negative, height, width, frames, seed, *settings, progress=gr.Progress()
    ):
        if image is None:
            raise im.StudioInputError("give the first frame: upload an image or send a text-to-image sample")
        return self.clips(
            prompts, negative, height, width, frames, seed, settings, np.asarray(image), progress
        )

    def send_first_frame(self, pictures: list[Picture] | None, index: int | None):
        if not pictures:
            raise im.StudioInputError("generate a text-to-image grid first, then click a sample and send it")
        picture = pictures[int(index or 0)]
        return self.big(picture.pixels), gr.update(value=str(picture.condition)), gr.Tabs(selected="i2v")
