"""The studio's page: Gradio components wired to :class:`grn.studio.engine.Studio`'s calls.

Only layout and glue live here; what the callbacks compute is in :mod:`~grn.studio.images`,
:mod:`~grn.studio.steps` and :mod:`~grn.studio.engine` (tested without a browser in ``tests/studio``). Every
callback turns a bad input into a message in the page (``gr.Error``), never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the page is served locally

import gradio as gr  # noqa: E402

from grn.sampling.schedules import SCHEDULES  # noqa: E402
from grn.sampling.selection import SELECTIONS  # noqa: E402
from grn.studio.engine import Studio  # noqa: E402
from grn.studio.page import SETTING_NAMES, Page, page_errors  # noqa: E402
from grn.studio.steps import legend_html  # noqa: E402


CSS = """
.grn-legend { font-size: 0.9em; margin: 0.2em 0 0.6em 0; }
#grn-header p { margin: 0; }
"""
# C2I schedules: the released T2I/T2V schedule is for text models only
C2I_SCHEDULES = tuple(s for s in SCHEDULES if s != "official_t2iv")


def settings_panel(studio: Studio) -> list[gr.components.Component]:
    """The decoding settings (shared by every tab), initialised from the checkpoint's stored sampler: the seed,
    then the controls named by :data:`~grn.studio.page.SETTING_NAMES`, in that order."""
    d = studio.defaults
    c: dict[str, gr.components.Component] = {}
    schedules = C2I_SCHEDULES if studio.kind == "c2i" else SCHEDULES
    with gr.Accordion("Decoding settings (shared by every tab)", open=True):
        with gr.Row():
            c["seed"] = gr.Number(value=d.seed, precision=0, label="seed", elem_id="seed", minimum=0)
            c["steps"] = gr.Slider(1, 100, value=d.num_steps, step=1, label="steps T", elem_id="steps")
            c["schedule"] = gr.Dropdown(
                list(schedules),
                value=d.schedule if d.schedule in schedules else "linear",
                label="schedule",
                elem_id="schedule",
            )
            c["temperature"] = gr.Slider(
                0.0,
                2.0,
                value=d.temperature,
                step=0.05,
                label="temperature τ (0 = argmax)",
                elem_id="temperature",
            )
        with gr.Row():
            c["cfg_scale"] = gr.Slider(
                1.0, 10.0, value=d.cfg_scale, step=0.05, label="guidance (cfg) scale", elem_id="cfg_scale"
            )
            c["cfg_lo"] = gr.Slider(
                0.0, 1.0, value=d.cfg_interval[0], step=0.05, label="guidance from t >", elem_id="cfg_lo"
            )
            c["cfg_hi"] = gr.Slider(
                0.0, 1.0, value=d.cfg_interval[1], step=0.05, label="guidance to t <", elem_id="cfg_hi"
            )
            c["selection"] = gr.Dropdown(
                list(SELECTIONS), value=d.selection, label="kept predictions", elem_id="selection"
            )
            c["revise"] = gr.Checkbox(
                value=d.revise, label="revise kept tokens (off: mask-based baseline)", elem_id="revise"
            )
        with gr.Accordion(
            "Complexity-aware schedule (paper Eq. 8-9): steps per sample from the entropy", open=False
        ):
            with gr.Row():
                c["warmup"] = gr.Number(value=d.complexity_warmup_steps, precision=0, label="warm-up steps")
                c["alpha"] = gr.Number(value=d.alpha, label="alpha (warm-up schedule length)")
                c["k"] = gr.Number(value=d.k, label="k (steps per unit entropy)")
                c["b"] = gr.Number(value=d.b, label="b (steps at zero entropy)")
                c["tmin"] = gr.Number(value=d.complexity_min_steps, precision=0, label="min steps")
                c["tmax"] = gr.Number(value=d.complexity_max_steps, precision=0, label="max steps")
    return [c["seed"], *(c[name] for name in SETTING_NAMES)]


def class_or_prompt(c2i: bool, class_choices: list[str], class_label: str, prompt_label: str, elem: str):
    """``(class, prompt)`` inputs of a tab: a class dropdown and an empty prompt for a class model, no class and a
    prompt box for a text model (elem ids ``<elem>-class`` / ``<elem>-prompt``)."""
    if c2i:
        first = class_choices[0] if class_choices else None
        return gr.Dropdown(class_choices, value=first, label=class_label, elem_id=f"{elem}-class"), gr.State("")
    return gr.State(None), gr.Textbox("a handwritten seven", label=prompt_label, elem_id=f"{elem}-prompt")


def grid_gallery(columns: int) -> gr.Gallery:
    """The generated grid (a click selects a sample to revise)."""
    return gr.Gallery(label="samples (click one to revise it)", columns=columns, format="png", elem_id="grid",
                      height="auto", allow_preview=True)


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
                    gallery = grid_gallery(5)
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
                    prompts = gr.Textbox("a handwritten seven\na handwritten two", lines=3,
                                         label="prompts (one sample per line)", elem_id="prompts")
                    with gr.Row():
                        negative = gr.Textbox("", label="negative prompt", elem_id="negative")
                        height = gr.Number(studio.height, precision=0, label="height", elem_id="height")
                        width = gr.Number(studio.width, precision=0, label="width", elem_id="width")
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    gallery = grid_gallery(8)
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
                    v_prompts = gr.Textbox("a handwritten seven moving left", lines=2,
                                           label="prompts (one clip per line)", elem_id="v-prompts")
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
                            i_prompts = gr.Textbox("a handwritten seven moving left", lines=2, label="prompt",
                                                   elem_id="i-prompts")
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
                        overlay = gr.Image(label="token grid of the mask (magenta: regenerated)", format="png", interactive=False,
                                         elem_id="overlay", height=side + 48)
                        revised = gr.Image(label="revised", format="png", interactive=False,
                                         elem_id="revised", height=side + 48)
                with gr.Row():
                    r_class, r_prompt = class_or_prompt(
                        c2i, class_choices, "regenerate the region as class",
                        "regenerate the region with the prompt", "r",
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
                    l_class, l_prompt = class_or_prompt(c2i, class_choices, "class", "prompt", "l")
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
