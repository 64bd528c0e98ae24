"""The page without a browser: it builds for a class model and a text model, its callbacks (called as Gradio
calls them) turn bad input into a gr.Error message, a revision from the editor keeps the sample's own tokens,
and the command line refuses a bad key with one line."""

import subprocess
import sys

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from grn.studio import images as im
from grn.studio.app import build
from grn.studio.page import SETTING_NAMES, Page, page_errors, same_picture
from grn.studio.engine import Studio

SETTINGS = {"steps": 3, "schedule": "linear", "temperature": 1.0, "cfg_scale": 1.0, "cfg_lo": 0.0, "cfg_hi": 1.0,
            "selection": "random", "revise": True, "warmup": 5, "alpha": 50, "k": 0, "b": 50, "tmin": 10, "tmax": 50}


def settings(**kw):
    values = {**SETTINGS, **kw}
    return [values[name] for name in SETTING_NAMES]


class NoProgress:
    def __call__(self, *args, **kwargs):
        pass


@pytest.fixture(scope="module")
def page(tiny_c2i_checkpoints, tmp_path_factory):
    return Page(Studio.load(tiny_c2i_checkpoints[0]), tmp_path_factory.mktemp("studio_work"))


def test_pages_build_for_both_kinds(tiny_c2i_checkpoints, tiny_text_checkpoints, tmp_path):
    c2i = build(Studio.load(tiny_c2i_checkpoints[0]), tmp_path / "a")
    ids = {getattr(b, "elem_id", None) for b in c2i.blocks.values()}
    assert {
        "generate",
        "grid",
        "editor",
        "regenerate",
        "overlay",
        "revised",
        "tokens",
        "l-go",
        "l-plot",
    } <= ids
    assert "v-generate" not in ids
    text = build(Studio.load(tiny_text_checkpoints[0]), tmp_path / "b")
    ids = {getattr(b, "elem_id", None) for b in text.blocks.values()}
    assert {"prompts", "v-generate", "i-generate", "r-prompt", "editor", "l-prompt"} <= ids
    assert "classes" not in ids


def test_generate_send_paint_and_revise(page):
    gallery, summary, pictures, _ = page.generate(["3", "7"], 2, 0, *settings(), progress=NoProgress())
    assert len(gallery) == 4 and gallery[0][0].shape == (256, 256, 3) and "3 steps" in gallery[0][1]
    assert "4 images in" in summary and "steps per sample: 3, 3, 3, 3" in summary
    editor, source, overlay, cls, prompt, text, _ = page.send(pictures, 2)
    assert source is pictures[2] and cls == "7" and "class 7" in text and overlay.shape == (256, 256, 3)
    layer = np.zeros((256, 256, 4), np.uint8)
    layer[100:120, 30:50, 3] = 255  # displayed pixels -> model rows 12-14, cols 3-6 -> tokens (3, 0..1)
    value = {**editor, "layers": [layer]}
    preview = page.preview(value, source)
    assert preview.shape == (256, 256, 3) and not np.array_equal(preview, overlay)
    revised, overlay, text, npz, result = page.revise(
        value, source, "1", "", "", 4, *settings(), progress=NoProgress()
    )
    data = np.load(npz)
    assert np.array_equal(data["labels_in"], pictures[2].labels)  # the sample's own tokens, not re-encoded
    assert data["region"].sum() == 2 and data["region"][3, 0] and data["region"][3, 1]
    outside = ~np.broadcast_to(data["region"], data["labels_in"].shape)
    assert np.array_equal(data["labels_out"][outside], data["labels_in"][outside])
    assert "2 of 64 token cells" in text and "identical, bit for bit" in text and "from class 7" in text
    assert revised.shape == (256, 256, 3) and result.condition == 1
    editor2, source2, _, text2 = page.continue_from(result)
    assert source2 is result and "last result" in text2


def test_the_editor_image_is_encoded_when_it_is_not_the_source(page):
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    big = im.upscale(pixels, 8)
    layer = np.zeros((256, 256, 4), np.uint8)
    layer[:8, :8, 3] = 255
    picture, mask = page.source_from_editor({"background": big, "layers": [layer], "composite": big}, None)
    assert "encoded" in picture.about and np.array_equal(picture.labels, page.studio.encode(pixels))
    assert mask.sum() == 1 and mask[0, 0]
    assert same_picture(picture, np.clip(pixels.astype(int) + 2, 0, 255).astype(np.uint8))
    assert not same_picture(picture, np.clip(pixels.astype(int) + 3, 0, 255).astype(np.uint8))


def test_bad_uploads_and_settings_are_messages_in_the_page(page, tmp_path):
    upload = page_errors(page.upload)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(gr.Error, match="notes.txt is not an image"):
        upload(str(text))
    odd = tmp_path / "odd.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(odd)
    with pytest.raises(gr.Error, match="odd.png is 50x40 pixels; this model works on 32x32"):
        upload(str(odd))
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    editor, source, _, message = upload(str(good))
    assert source.pixels.shape == (32, 32, 3) and "good.png" in message
    revise = page_errors(page.revise)
    with pytest.raises(gr.Error, match="the mask is empty"):
        revise(editor, source, "0", "", "", 0, *settings(), progress=NoProgress())
    with pytest.raises(gr.Error, match="no image to revise"):
        revise(None, None, "0", "", "", 0, *settings(), progress=NoProgress())
    with pytest.raises(gr.Error, match="guidance interval is empty"):
        page_errors(page.generate)(["1"], 1, 0, *settings(cfg_lo=0.8, cfg_hi=0.2), progress=NoProgress())
    with pytest.raises(gr.Error, match="generate a grid first"):
        page_errors(page.send)(None, 0)


def test_live_callback_streams_every_step(page):
    outs = list(page_errors(page.live)("5", "", "", 0, *settings(steps=4)))
    assert len(outs) == 5
    colours, picture, plot, status, strip = outs[-1]
    assert colours.shape == (256, 256, 3) and picture.shape == (256, 256, 3) and plot.ndim == 3
    assert "done in 4 steps" in status and len(strip) == 4


def test_text_page_callbacks(tiny_text_checkpoints, tmp_path):
    page = Page(Studio.load(tiny_text_checkpoints[0], height=16, width=16), tmp_path)
    gallery, summary, pictures, _ = page.text_to_image(
        "a one\na two", "", 16, 16, 0, *settings(), progress=NoProgress()
    )
    assert len(pictures) == 2 and "2 images in" in summary
    video, strip, text = page.video("a one moving left", "", 16, 16, 5, 0, *settings(), progress=NoProgress())
    assert video.endswith(".mp4") and len(strip) == 5 and "1 clip(s) of 5 frames" in text
    first, prompt, _ = page.send_first_frame(pictures, 1)
    video, strip, text = page.image_to_video(
        first, "a two moving right", "", 16, 16, 5, 0, *settings(), progress=NoProgress()
    )
    assert len(strip) == 5
    with pytest.raises(gr.Error, match="give the first frame"):
        page_errors(page.image_to_video)(None, "x", "", 16, 16, 5, 0, *settings(), progress=NoProgress())


def test_command_line_refuses_bad_keys_with_one_line(tmp_path):
    env_python = sys.executable
    out = subprocess.run([env_python, "-m", "grn.studio"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: ckpt is not set")
    out = subprocess.run(
        [env_python, "-m", "grn.studio", f"ckpt={tmp_path}/none.ckpt"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr
    from grn.entrypoints.cli import main, usage

    assert "studio" in usage()
    with pytest.raises(SystemExit) as err:
        main(["frobnicate"])
    assert err.value.code == 2
