"""The studio in a real browser (Debian's chromium, headless, through Playwright) against ``python -m
grn.studio``
on localhost: generate a grid, send a sample to sketch and revise, paint a mask with the mouse on the editor's
canvas, regenerate, and check from what the page returns — the revised PNG and the tokens file it links — that
every label outside the mask's token grid is the source's, bit for bit, and that the painted region changed.
Bad uploads and an empty mask must show their message in the page. Run by ``make test-browser``."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from grn.pipeline import GRNPipeline
from grn.studio import images as im

pytestmark = pytest.mark.browser


# ------------------------------------------------------------------------------------------------ helpers
def open_studio(page, url: str) -> None:
    page.goto(url, wait_until="load")
    page.wait_for_selector("#tabs", state="visible")


def wait_text(page, selector: str, text: str) -> str:
    """Wait until ``selector`` exists and its text contains ``text``; returns its text."""
    page.wait_for_function(
        "([sel, text]) => { const el = document.querySelector(sel); "
        "return !!el && el.innerText.includes(text); }",
        arg=[selector, text],
    )
    return page.inner_text(selector)


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def fetch(page, url: str) -> bytes:
    response = page.request.get(url)
    assert response.ok, f"{url}: HTTP {response.status}"
    return response.body()


def png_at(page, selector: str, index: int = 0) -> np.ndarray:
    src = page.locator(selector).nth(index).get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(fetch(page, src))).convert("RGB"))


def tokens_file(page) -> dict[str, np.ndarray]:
    href = page.locator("#tokens a").first.get_attribute("href")
    with np.load(io.BytesIO(fetch(page, href))) as data:
        return {k: data[k] for k in data.files}


def paint(page, dx: float = -40, dy: float = -40, length: int = 12) -> None:
    """A brush stroke with the mouse across the middle of the editor's canvas (the image is centred there)."""
    canvas = page.locator("#editor canvas").first
    canvas.wait_for(state="visible")
    page.wait_for_timeout(500)  # the canvas draws its background after it appears
    box = canvas.bounding_box()
    x0, y0 = box["x"] + box["width"] / 2 + dx, box["y"] + box["height"] / 2 + dy
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, length + 1):
        page.mouse.move(x0 + 4 * k, y0 + 2 * k, steps=2)
    page.mouse.up()
    page.wait_for_timeout(500)


def error_shown(page, text: str) -> None:
    """The page shows ``text`` (a gr.Error toast) and no traceback."""
    page.get_by_text(text, exact=False).first.wait_for(state="visible")
    assert "Traceback" not in page.inner_text("body")


def decode(tokenizer, labels: np.ndarray) -> np.ndarray:
    x = tokenizer.decode_labels(torch.from_numpy(labels)[None], target="index").clamp(-1, 1)
    return im.to_uint8(x)[0]


@pytest.fixture(scope="module")
def c2i_tokenizer(c2i_server, tiny_c2i_checkpoints):
    ckpt = os.environ.get("GRN_STUDIO_CKPT") or tiny_c2i_checkpoints[0]
    return GRNPipeline.from_pretrained(ckpt).tokenizer


# ------------------------------------------------------------------------------------------------ tests
def test_grid_then_sketch_and_revise_keeps_the_unpainted_tokens(page, c2i_server, c2i_tokenizer, shoot):
    open_studio(page, c2i_server.url)
    trained = bool(os.environ.get("GRN_STUDIO_CKPT"))  # a trained checkpoint samples at its own settings
    if not trained:
        set_number(page, "steps", 6)
    t0 = time.perf_counter()
    page.click("#generate")
    summary = wait_text(page, "#grid-summary", "images in")
    print(f"10-image grid: {time.perf_counter() - t0:.2f} s from the click to the page; {summary}")
    assert "10 images in" in summary
    assert trained or "steps per sample: 6, 6, 6, 6, 6, 6, 6, 6, 6, 6" in summary
    thumbs = page.locator("#grid .thumbnail-item img")
    assert thumbs.count() == 10
    sample = im.fit_picture(png_at(page, "#grid .thumbnail-item img", 3), 32)
    shoot(page, "grid")

    page.locator("#grid .thumbnail-item").nth(3).click()
    page.click("#send")
    wait_text(page, "#source-text", "class 3")
    paint(page)
    shoot(page, "painted")
    t0 = time.perf_counter()
    page.click("#regenerate")
    text = wait_text(page, "#revise-summary", "Revised in")
    print(f"revision: {time.perf_counter() - t0:.2f} s from the click to the page; {text}")
    shoot(page, "revised")
    assert "identical, bit for bit" in text and "from class 3" in text

    data = tokens_file(page)
    region, labels_in, labels_out = data["region"], data["labels_in"], data["labels_out"]
    # the mask became a token grid: not empty, not everything, and exactly the cells over the painted pixels
    assert 0 < region.sum() < region.size / 2
    assert np.array_equal(region, im.token_grid(data["mask"], c2i_tokenizer.spatial_stride))
    # the source tokens are the sample's own: they decode to the picture the grid showed
    assert np.abs(decode(c2i_tokenizer, labels_in).astype(int) - sample.astype(int)).max() <= 1
    # outside the grid every label is the source's, bit for bit; inside, the region was regenerated
    outside = ~np.broadcast_to(region, labels_in.shape)
    assert np.array_equal(labels_out[outside], labels_in[outside])
    assert (labels_out[~outside] != labels_in[~outside]).any()
    # the page's revised PNG is the decoding of those labels, and it changed where the mask was painted
    revised = im.fit_picture(png_at(page, "#revised img"), 32)
    assert np.array_equal(revised, data["image_out"])
    assert np.abs(decode(c2i_tokenizer, labels_out).astype(int) - revised.astype(int)).max() <= 1
    painted = data["mask"]
    assert np.abs(revised[painted].astype(int) - sample[painted].astype(int)).mean() > 1
    # re-encoding the returned pixels: the tokenizer decodes with attention, so a changed token moves pixels
    # everywhere a little; the bit-exact guarantee is on the tokens above. Reported, not asserted:
    enc = lambda p: c2i_tokenizer.encode(im.from_uint8(p), target="index")[0].numpy()  # noqa: E731
    same = (enc(revised) == enc(sample))[outside].mean()
    print(f"re-encoded pixels: {same:.1%} of the labels outside the grid match")

    page.click("#continue")
    wait_text(page, "#source-text", "last result")


def test_an_upload_is_encoded_and_bad_uploads_show_a_message(
    page, c2i_server, c2i_tokenizer, tmp_path, shoot
):
    open_studio(page, c2i_server.url)
    page.get_by_role("tab", name="Sketch and revise").click()

    def upload(path):
        with page.expect_file_chooser() as chooser:
            page.click("#upload")
        chooser.value.set_files(str(path))

    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    upload(notes)
    error_shown(page, "notes.txt is not an image")
    shoot(page, "not-an-image", full_page=False)
    odd = tmp_path / "odd.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(odd)
    upload(odd)
    error_shown(page, "odd.png is 50x40 pixels")

    rng = np.random.default_rng(0)
    pixels = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((4, 4, 1))).astype(np.uint8)  # 32x32 blocks
    good = tmp_path / "blocks.png"
    Image.fromarray(im.upscale(pixels, 8)).save(good)  # 256x256: what the page itself shows
    upload(good)
    wait_text(page, "#source-text", "blocks.png")
    page.click("#regenerate")
    error_shown(page, "the mask is empty")
    shoot(page, "empty-mask", full_page=False)

    paint(page, dx=10, dy=10, length=6)
    page.click("#regenerate")
    wait_text(page, "#revise-summary", "Revised in")
    data = tokens_file(page)
    encoded = c2i_tokenizer.encode(im.from_uint8(pixels), target="index")[0].numpy()
    assert np.array_equal(data["image_in"], pixels)
    assert np.array_equal(
        data["labels_in"], encoded
    )  # the upload's tokens are the tokenizer's encoding of it
    outside = ~np.broadcast_to(data["region"], encoded.shape)
    assert data["region"].any() and np.array_equal(data["labels_out"][outside], encoded[outside])


def test_refinement_view_shows_every_step(page, c2i_server, shoot):
    open_studio(page, c2i_server.url)
    set_number(page, "steps", 6)
    page.get_by_role("tab", name="Refinement, step by step").click()
    page.click("#l-go")
    wait_text(page, "#l-summary", "done in 6 steps")
    page.locator("#l-strip .thumbnail-item").nth(5).wait_for(state="attached")
    assert page.locator("#l-strip .thumbnail-item").count() == 6
    for sel in ("#l-map img", "#l-pic img", "#l-plot img"):
        assert png_at(page, sel).size > 0
    shoot(page, "refinement")


def test_text_model_tabs_and_a_revision_with_a_prompt(page, text_server, tiny_text_checkpoints, shoot):
    open_studio(page, text_server.url)
    set_number(page, "steps", 3)
    page.click("#generate")
    assert "2 images in" in wait_text(page, "#grid-summary", "images in")
    page.locator("#grid .thumbnail-item").nth(1).click()
    page.click("#send")
    wait_text(page, "#source-text", "a handwritten two")
    page.fill("#r-prompt textarea", "a handwritten nine")
    paint(page, dx=-30, dy=-30, length=4)
    page.click("#regenerate")
    wait_text(page, "#revise-summary", "Revised in")
    data = tokens_file(page)
    outside = ~np.broadcast_to(data["region"], data["labels_in"].shape)
    assert data["region"].any() and np.array_equal(data["labels_out"][outside], data["labels_in"][outside])
    shoot(page, "text-revised")

    page.get_by_role("tab", name="Text to video").click()
    page.click("#v-generate")
    assert "1 clip(s) of 5 frames" in wait_text(page, "#v-summary", "clip(s)")
    assert page.locator("#v-video video").first.get_attribute("src")
    assert page.locator("#v-strip .thumbnail-item").count() == 5
    shoot(page, "text-to-video")
