"""The studio's page: Gradio components wired to :class:`grn.studio.engine.Studio`'s calls.

Only layout and glue live here; what the callbacks compute is in :mod:`~grn.studio.images`,
:mod:`~grn.studio.steps` and :mod:`~grn.studio.engine` (tested without a browser in ``tests/studio``). Every
callback turns a bad input into a message in the page (``gr.Error``), never a traceback.
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

from grn.sampling.schedules import SCHEDULES  # noqa: E402
from grn.sampling.selection import SELECTIONS  # noqa: E402
from grn.studio import images as im  # noqa: E402
from grn.studio.engine import Picture, Studio  # noqa: E402
from grn.studio.steps import legend_html, refinement_plot, state_map  # noqa: E402

log = logging.getLogger("grn.studio")

CSS = """
.grn-legend { font-size: 0.9em; margin: 0.2em 0 0.6em 0; }
#grn-header p { margin: 0; }
"""
# C2I schedules: the released T2I/T2V schedule is for text models only
C2I_SCHEDULES = tuple(s for s in SCHEDULES if s != "official_t2iv")


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

    def cfg(
        self,
        steps,
        schedule,
        temperature,
        cfg_scale,
        cfg_lo,
        cfg_hi,
        selection,
        revise,
        warmup,
        alpha,
        k,
        b,
        tmin,
        tmax,
    ):
        lo, hi = float(cfg_lo), float(cfg_hi)
        if lo > hi:
            raise im.StudioInputError(
                f"the guidance interval is empty: from {lo} to {hi}; make 'from' <= 'to'"
            )
        return self.studio.sampler(
            num_steps=int(steps),
            schedule=schedule,
            temperature=float(temperature),
            cfg_scale=float(cfg_scale),
            cfg_interval=(lo, hi),
            selection=selection,
            revise=bool(revise),
            complexity_warmup_steps=int(warmup),
            alpha=float(alpha),
            k=float(k),
            b=float(b),
            complexity_min_steps=int(tmin),
            complexity_max_steps=int(tmax),
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


def settings_panel(studio: Studio) -> list[gr.components.Component]:
    """The decoding settings (shared by every tab), initialised from the checkpoint's stored sampler."""
    d = studio.defaults
    schedules = C2I_SCHEDULES if studio.kind == "c2i" else SCHEDULES
    with gr.Accordion("Decoding settings (shared by every tab)", open=True):
        with gr.Row():
            seed = gr.Number(value=d.seed, precision=0, label="seed", elem_id="seed", minimum=0)
            steps = gr.Slider(1, 100, value=d.num_steps, step=1, label="steps T", elem_id="steps")
            schedule = gr.Dropdown(
                list(schedules),
                value=d.schedule if d.schedule in schedules else "linear",
                label="schedule",
                elem_id="schedule",
            )
            temperature = gr.Slider(
                0.0,
                2.0,
                value=d.temperature,
                step=0.05,
                label="temperature τ (0 = argmax)",
                elem_id="temperature",
            )
        with gr.Row():
            cfg_scale = gr.Slider(
                1.0, 10.0, value=d.cfg_scale, step=0.05, label="guidance (cfg) scale", elem_id="cfg_scale"
            )
            cfg_lo = gr.Slider(
                0.0, 1.0, value=d.cfg_interval[0], step=0.05, label="guidance from t >", elem_id="cfg_lo"
            )
            cfg_hi = gr.Slider(
                0.0, 1.0, value=d.cfg_interval[1], step=0.05, label="guidance to t <", elem_id="cfg_hi"
            )
            selection = gr.Dropdown(
                list(SELECTIONS), value=d.selection, label="kept predictions", elem_id="selection"
            )
            revise = gr.Checkbox(
                value=d.revise, label="revise kept tokens (off: mask-based baseline)", elem_id="revise"
            )
        with gr.Accordion(
            "Complexity-aware schedule (paper Eq. 8-9): steps per sample from the entropy", open=False
        ):
            with gr.Row():
                warmup = gr.Number(value=d.complexity_warmup_steps, precision=0, label="warm-up steps")
                alpha = gr.Number(value=d.alpha, label="alpha (warm-up schedule length)")
                k = gr.Number(value=d.k, label="k (steps per unit entropy)")
                b = gr.Number(value=d.b, label="b (steps at zero entropy)")
                tmin = gr.Number(value=d.complexity_min_steps, precision=0, label="min steps")
                tmax = gr.Number(value=d.complexity_max_steps, precision=0, label="max steps")
    return [
        seed,
        steps,
        schedule,
        temperature,
        cfg_scale,
        cfg_lo,
        cfg_hi,
        selection,
        revise,
        warmup,
        alpha,
        k,
        b,
        tmin,
        tmax,
    ]


def header(studio: Studio) -> str:
    h, w = studio.image_size
    net = studio.net
    what = (
        f"class-to-image model, {studio.num_classes} classes, {h}x{w} pixels"
        if studio.kind == "c2i"
        else f"text-to-image/video model (default {w}x{h}, {studio.frames} frames)"
    )
    return (
        f"## GRN studio\n{Path(studio.name).as_posix() if studio.name else 'model'} · {what} · tokens "
        f"{h // studio.stride}x{w // studio.stride} x {net.latent_dim} channels, M = {net.hbq_rounds} · "
        f"{'GRN_bit' if net.target == 'bits' else 'GRN_ind'} · device {studio.pipe.device}"
    )


def build(studio: Studio, workdir: str | Path | None = None) -> gr.Blocks:
    """The page for ``studio``: decoding settings above the tabs; class-to-image, sketch and revise and the
    refinement view for a class model; text-to-image, text-to-video, image-to-video, sketch and revise and the
    refinement view for a text model."""
    page = Page(studio, workdir)
    c2i = studio.kind == "c2i"
    scale = studio.scale()
    with gr.Blocks(title="GRN studio", analytics_enabled=False) as demo:
        gr.Markdown(header(studio), elem_id="grn-header")
        settings = settings_panel(studio)
        seed, cfg_settings = settings[0], settings[1:]
        pictures = gr.State(None)  # the last grid (list[Picture])
        selected = gr.State(0)
        source = gr.State(None)  # the Picture in the editor (with its tokens)
        result = gr.State(None)  # the last revision's result
        class_choices = [str(c) for c in range(studio.num_classes)]
        with gr.Tabs(elem_id="tabs") as tabs:
            if c2i:
                with gr.Tab("Class to image", id="c2i", elem_id="tab-c2i"):
                    with gr.Row():
                        classes = gr.Dropdown(
                            class_choices,
                            value=class_choices[: min(10, len(class_choices))],
                            multiselect=True,
                            label="classes",
                            elem_id="classes",
                            scale=4,
                        )
                        per_class = gr.Number(
                            value=1,
                            precision=0,
                            minimum=1,
                            maximum=16,
                            label="samples per class",
                            elem_id="per_class",
                            scale=1,
                        )
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    gallery = gr.Gallery(
                        label="samples (click one to revise it)",
                        columns=5,
                        format="png",
                        elem_id="grid",
                        height="auto",
                        allow_preview=True,
                    )
                    grid_text = gr.Markdown(elem_id="grid-summary")
                    send = gr.Button("Sketch and revise the selected sample", elem_id="send")
                    go.click(
                        page_errors(page.generate),
                        [classes, per_class, seed, *cfg_settings],
                        [gallery, grid_text, pictures, selected],
                        concurrency_limit=1,
                    )
            else:
                with gr.Tab("Text to image", id="t2i", elem_id="tab-t2i"):
                    prompts = gr.Textbox(
                        "a handwritten seven\na handwritten two",
                        lines=3,
                        label="prompts (one sample per line)",
                        elem_id="prompts",
                    )
                    with gr.Row():
                        negative = gr.Textbox("", label="negative prompt", elem_id="negative")
                        height = gr.Number(studio.height, precision=0, label="height", elem_id="height")
                        width = gr.Number(studio.width, precision=0, label="width", elem_id="width")
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    gallery = gr.Gallery(
                        label="samples (click one to revise it)",
                        columns=8,
                        format="png",
                        elem_id="grid",
                        height="auto",
                        allow_preview=True,
                    )
                    grid_text = gr.Markdown(elem_id="grid-summary")
                    with gr.Row():
                        send = gr.Button("Sketch and revise the selected sample", elem_id="send")
                        send_i2v = gr.Button(
                            "Use the selected sample as the first frame of a video", elem_id="send-i2v"
                        )
                    go.click(
                        page_errors(page.text_to_image),
                        [prompts, negative, height, width, seed, *cfg_settings],
                        [gallery, grid_text, pictures, selected],
                        concurrency_limit=1,
                    )
                with gr.Tab("Text to video", id="t2v", elem_id="tab-t2v"):
                    v_prompts = gr.Textbox(
                        "a handwritten seven moving left",
                        lines=2,
                        label="prompts (one clip per line)",
                        elem_id="v-prompts",
                    )
                    with gr.Row():
                        v_frames = gr.Number(
                            studio.frames, precision=0, label="frames (1 + 4k)", elem_id="v-frames"
                        )
                    v_go = gr.Button("Generate clips", variant="primary", elem_id="v-generate")
                    v_video = gr.Video(label="clips", elem_id="v-video", autoplay=True, loop=True, height=320)
                    v_strip = gr.Gallery(
                        label="frames of the first clip",
                        columns=9,
                        format="png",
                        height="auto",
                        elem_id="v-strip",
                    )
                    v_text = gr.Markdown(elem_id="v-summary")
                    v_go.click(
                        page_errors(page.video),
                        [v_prompts, negative, height, width, v_frames, seed, *cfg_settings],
                        [v_video, v_strip, v_text],
                        concurrency_limit=1,
                    )
                with gr.Tab("Image to video", id="i2v", elem_id="tab-i2v"):
                    with gr.Row():
                        first = gr.Image(
                            label="first frame",
                            type="numpy",
                            format="png",
                            sources=["upload"],
                            elem_id="i-first",
                            image_mode="RGB",
                        )
                        with gr.Column():
                            i_prompts = gr.Textbox(
                                "a handwritten seven moving left",
                                lines=2,
                                label="prompt",
                                elem_id="i-prompts",
                            )
                            i_frames = gr.Number(
                                studio.frames, precision=0, label="frames (1 + 4k)", elem_id="i-frames"
                            )
                            i_go = gr.Button(
                                "Generate the rest of the clip", variant="primary", elem_id="i-generate"
                            )
                    i_video = gr.Video(label="clip", elem_id="i-video", autoplay=True, loop=True, height=320)
                    i_strip = gr.Gallery(
                        label="frames", columns=9, format="png", height="auto", elem_id="i-strip"
                    )
                    i_text = gr.Markdown(elem_id="i-summary")
                    i_go.click(
                        page_errors(page.image_to_video),
                        [first, i_prompts, negative, height, width, i_frames, seed, *cfg_settings],
                        [i_video, i_strip, i_text],
                        concurrency_limit=1,
                    )
            with gr.Tab("Sketch and revise", id="revise", elem_id="tab-revise"):
                gr.Markdown(
                    "Paint over the part to regenerate (any colour). The mask is rounded up to whole "
                    "tokens; every token outside it is returned exactly as it was."
                )
                with gr.Row():
                    with gr.Column():
                        side = 256 if scale * studio.image_size[0] < 256 else scale * studio.image_size[0]
                        editor = gr.ImageEditor(
                            type="numpy",
                            format="png",
                            image_mode="RGBA",
                            label="image: paint the region",
                            brush=gr.Brush(
                                colors=["#ff00ff"], default_size=max(4, 2 * scale), color_mode="fixed"
                            ),
                            eraser=gr.Eraser(default_size=max(4, 2 * scale)),
                            layers=False,
                            transforms=(),
                            sources=("upload", "clipboard"),
                            canvas_size=(side, side),
                            elem_id="editor",
                        )
                        upload = gr.UploadButton(
                            "Upload an image file", elem_id="upload", file_count="single"
                        )
                        source_text = gr.Markdown(
                            "Source: none yet. Send a generated sample here or upload an image.",
                            elem_id="source-text",
                        )
                    with gr.Column():
                        overlay = gr.Image(
                            label="token grid of the mask (magenta: regenerated)",
                            format="png",
                            interactive=False,
                            elem_id="overlay",
                            height=side + 48,
                        )
                        revised = gr.Image(
                            label="revised",
                            format="png",
                            interactive=False,
                            elem_id="revised",
                            height=side + 48,
                        )
                with gr.Row():
                    if c2i:
                        r_class = gr.Dropdown(
                            class_choices,
                            value=class_choices[0] if class_choices else None,
                            label="regenerate the region as class",
                            elem_id="r-class",
                        )
                        r_prompt = gr.State("")
                    else:
                        r_class = gr.State(None)
                        r_prompt = gr.Textbox(
                            "a handwritten seven",
                            label="regenerate the region with the prompt",
                            elem_id="r-prompt",
                        )
                    r_go = gr.Button("Regenerate the painted region", variant="primary", elem_id="regenerate")
                    r_again = gr.Button("Continue from the result", elem_id="continue")
                r_text = gr.Markdown(elem_id="revise-summary")
                r_file = gr.File(
                    label="tokens (npz: labels_in, labels_out, region, mask, image_in, image_out)",
                    elem_id="tokens",
                    interactive=False,
                )
                r_negative = negative if not c2i else gr.State("")
                r_go.click(
                    page_errors(page.revise),
                    [editor, source, r_class, r_prompt, r_negative, seed, *cfg_settings],
                    [revised, overlay, r_text, r_file, result],
                    concurrency_limit=1,
                )
                r_again.click(
                    page_errors(page.continue_from), [result], [editor, source, overlay, source_text]
                )
                upload.upload(
                    page_errors(page.upload),
                    [upload],
                    [editor, source, overlay, source_text],
                    show_progress="hidden",
                )
                editor.change(
                    page.preview,
                    [editor, source],
                    [overlay],
                    show_progress="hidden",
                    trigger_mode="always_last",
                    queue=False,
                )
            with gr.Tab("Refinement, step by step", id="live", elem_id="tab-live"):
                gr.Markdown(
                    "One sample, refined step by step: after each step every token is **filled** (a "
                    "prediction replaces noise), **kept** or **refined** (a kept prediction, the same or "
                    "a new value), **erased** (back to noise) or still **noise**; a cell mixes the colours "
                    "of its latent channels. Right: the map decoded after the step."
                )
                gr.HTML(legend_html())
                with gr.Row():
                    if c2i:
                        l_class = gr.Dropdown(
                            class_choices,
                            value=class_choices[0] if class_choices else None,
                            label="class",
                            elem_id="l-class",
                        )
                        l_prompt = gr.State("")
                    else:
                        l_class = gr.State(None)
                        l_prompt = gr.Textbox("a handwritten seven", label="prompt", elem_id="l-prompt")
                    l_go = gr.Button("Refine and watch", variant="primary", elem_id="l-go")
                with gr.Row():
                    l_map = gr.Image(
                        label="token states after the step", format="png", interactive=False, elem_id="l-map"
                    )
                    l_pic = gr.Image(
                        label="the map decoded", format="png", interactive=False, elem_id="l-pic"
                    )
                l_plot = gr.Image(
                    label="entropy and token states per step",
                    format="png",
                    interactive=False,
                    elem_id="l-plot",
                )
                l_text = gr.Markdown(elem_id="l-summary")
                l_strip = gr.Gallery(
                    label="every step", columns=10, format="png", height="auto", elem_id="l-strip"
                )
                l_negative = negative if not c2i else gr.State("")
                l_go.click(
                    page_errors(page.live),
                    [l_class, l_prompt, l_negative, seed, *cfg_settings],
                    [l_map, l_pic, l_plot, l_text, l_strip],
                    concurrency_limit=1,
                )
        gallery.select(page.select, None, selected)
        send.click(
            page_errors(page.send),
            [pictures, selected],
            [editor, source, overlay, r_class, r_prompt, source_text, tabs],
        )
        if not c2i:
            send_i2v.click(page_errors(page.send_first_frame), [pictures, selected], [first, i_prompts, tabs])
    demo.page = page  # for tests
    return demo


def theme():
    """The default theme with the machine's own fonts (the page loads nothing from outside)."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )


def launch(
    studio: Studio,
    host: str = "127.0.0.1",
    port: int = 7860,
    inbrowser: bool = False,
    block: bool = True,
    quiet: bool = False,
    workdir: str | Path | None = None,
):
    """Serve the page on ``host:port`` (local by default); ``block=False`` returns ``(demo, url)`` at once."""
    demo = build(studio, workdir)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(
        server_name=host,
        server_port=int(port),
        inbrowser=inbrowser,
        share=False,
        prevent_thread_lock=not block,
        quiet=quiet,
        theme=theme(),
        css=CSS,
        footer_links=[],
        show_error=False,
    )
    return demo, url
