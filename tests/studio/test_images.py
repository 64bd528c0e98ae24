"""The studio's picture functions: tensors <-> uint8, uploads fitted or refused with a message, the editor's
mask rounded up to model pixels and then to tokens (the pipelines' rule), the token grid drawn over a
picture."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from grn.sampling.region import latent_region
from grn.studio import images as im


def picture(h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_uint8_round_trip_is_exact():
    p = picture()
    x = im.from_uint8(p)
    assert x.shape == (1, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(im.to_uint8(x)[0], p)
    clips = torch.zeros(2, 3, 5, 8, 8)
    assert im.to_uint8(clips).shape == (2, 5, 8, 8, 3)


def test_the_page_scale_and_fit_recover_the_model_pixels_exactly():
    p = picture()
    k = im.display_scale(32)
    assert k == 8 and im.display_scale(256) == 1 and im.display_scale(300) == 1
    big = im.upscale(p, k)
    assert big.shape == (256, 256, 3)
    assert np.array_equal(im.fit_picture(big, 32), p)
    assert np.array_equal(im.fit_picture(p, 32), p)
    # a larger multiple is averaged block by block
    assert im.fit_picture(np.full((64, 64, 3), 7, np.uint8), 32).shape == (32, 32, 3)


@pytest.mark.parametrize("shape", [(40, 50, 3), (48, 48, 3), (31, 31, 3)])
def test_a_wrong_size_is_refused_with_the_accepted_sizes(shape):
    with pytest.raises(
        im.StudioInputError, match=r"is \d+x\d+ pixels; this model works on 32x32 or a whole multiple"
    ):
        im.fit_picture(np.zeros(shape, np.uint8), 32, "notes.png")


def test_grey_alpha_and_float_pictures_become_rgb():
    grey = np.full((4, 4), 10, np.uint8)
    assert im.as_rgb(grey).shape == (4, 4, 3) and im.as_rgb(grey)[0, 0].tolist() == [10, 10, 10]
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black over white -> white
    assert im.as_rgb(rgba)[0, 0].tolist() == [255, 255, 255]
    assert im.as_rgb(np.ones((2, 2, 3), np.float32))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(im.StudioInputError, match="expected a picture"):
        im.as_rgb(np.zeros((4, 4, 2)))


def test_read_picture_refuses_a_file_that_is_not_an_image(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    with pytest.raises(im.StudioInputError, match="notes.txt is not an image"):
        im.read_picture(text)
    png = tmp_path / "digit.png"
    Image.fromarray(picture()).save(png)
    assert np.array_equal(im.read_picture(png), picture())
    cut = tmp_path / "cut.png"
    cut.write_bytes(png.read_bytes()[:60])  # a truncated PNG
    with pytest.raises(im.StudioInputError, match="cut.png is not an image"):
        im.read_picture(cut)


def test_editor_mask_is_rounded_up_to_model_pixels():
    layer = np.zeros((256, 256, 4), np.uint8)
    layer[17, 200, 3] = 1  # one faint displayed pixel
    mask = im.editor_mask([layer], (32, 32))
    assert mask.shape == (32, 32) and mask.sum() == 1 and mask[17 // 8, 200 // 8]
    assert not im.editor_mask([], (32, 32)).any() and not im.editor_mask(None, (32, 32)).any()
    # no layer: where the composite differs from the background
    bg = picture(256, 256)
    comp = bg.copy()
    comp[100:110, 0:3] = [255, 0, 255]
    mask = im.editor_mask(None, (32, 32), bg, comp)
    assert mask[12:14, 0].all() and mask.sum() == 2
    with pytest.raises(im.StudioInputError, match="expected 32x32 or a whole multiple"):
        im.editor_mask([np.zeros((100, 100, 4), np.uint8)], (32, 32))


def test_token_grid_follows_the_pipelines_rule():
    mask = np.zeros((32, 32), bool)
    mask[5, 9] = True  # one pixel -> the one token over it (stride 4)
    grid = im.token_grid(mask, 4)
    assert grid.shape == (8, 8) and grid.sum() == 1 and grid[1, 2]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 31), st.integers(0, 31)), max_size=30), st.sampled_from([1, 2, 4, 8])
)
def test_token_grid_is_the_smallest_cover_of_the_mask(points, stride):
    mask = np.zeros((32, 32), bool)
    for r, c in points:
        mask[r, c] = True
    grid = im.token_grid(mask, stride)
    expect = np.zeros((32 // stride, 32 // stride), bool)
    for r, c in points:
        expect[r // stride, c // stride] = True
    assert np.array_equal(grid, expect)
    assert np.array_equal(grid, latent_region(torch.from_numpy(mask)[None, None], stride)[0, 0].numpy())


def test_grid_overlay_tints_the_selected_cells_only():
    p = np.full((32, 32, 3), 100, np.uint8)
    cells = np.zeros((8, 8), bool)
    cells[2, 3] = True
    out = im.grid_overlay(p, cells, 4, 8)
    assert out.shape == (256, 256, 3)
    inside = out[2 * 32 + 5, 3 * 32 + 5]
    outside = out[5 * 32 + 5, 5 * 32 + 5]
    assert outside.tolist() == [100, 100, 100]
    assert inside[0] > 100 and inside[1] < 100 and inside[2] > 100  # towards magenta
    assert out[0, 5].tolist() == im.GRID_RGB.tolist() and out[32, 5].tolist() == im.GRID_RGB.tolist()
    assert np.array_equal(im.grid_overlay(p, None, 4, 1), p)  # cells of 4 px: too small for lines


def test_tile_lays_pictures_out_in_rows():
    ps = [np.full((4, 4, 3), i, np.uint8) for i in range(5)]
    out = im.tile(ps, 3, pad=1)
    assert out.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert out[1, 1, 0] == 0 and out[1, 6, 0] == 1 and out[6, 6, 0] == 4 and out[6, 11, 0] == 128
