"""The studio's calls without the page, on tiny untrained checkpoints: class grids with their step counts, a
revision that keeps every label outside the token grid of the mask, the live view (the same sample as the
grid, step by step), uploads and settings refused with a message, and the text model's tabs."""

import numpy as np
import pytest
import torch

from grn.pipeline import GRNPipeline
from grn.studio import images as im
from grn.studio.engine import Studio, stored_sampler


@pytest.fixture(scope="module")
def studio(tiny_c2i_checkpoints):
    return Studio.load(tiny_c2i_checkpoints[0])


@pytest.fixture(scope="module")
def text_studio(tiny_text_checkpoints):
    return Studio.load(tiny_text_checkpoints[0], height=16, width=16, frames=5)


def test_grid_is_reproducible_and_reports_steps(studio):
    calls = []
    cfg = studio.sampler(num_steps=4)
    grid = studio.generate([3, 3, 7], seed=1, cfg=cfg, progress=lambda d, t: calls.append((d, t)))
    again = studio.generate([3, 3, 7], seed=1, cfg=cfg)
    assert studio.kind == "c2i" and studio.image_size == (32, 32) and studio.stride == 4
    assert len(grid.pictures) == 3 and grid.steps == [4, 4, 4] and grid.seconds > 0
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(grid.pictures, again.pictures))
    assert grid.pictures[0].labels.shape == (4, 8, 8) and grid.pictures[0].condition == 3
    assert calls == [(i, 4) for i in range(1, 5)]
    # the pictures are the pipeline's images for the same seed
    out = studio.pipe([3, 3, 7], seed=1, sampler=cfg)
    assert np.array_equal(im.to_uint8(out.images), np.stack([p.pixels for p in grid.pictures]))


def test_complexity_aware_grid_gives_per_sample_steps(studio):
    cfg = studio.sampler(
        schedule="complexity_aware",
        complexity_warmup_steps=2,
        complexity_min_steps=3,
        complexity_max_steps=12,
        k=30.0,
        b=-10.0,
    )
    grid = studio.generate(list(range(10)), seed=0, cfg=cfg)
    assert all(3 <= s <= 12 for s in grid.steps)


def test_revision_keeps_every_label_outside_the_token_grid(studio, tmp_path):
    source = studio.generate([5], seed=2, cfg=studio.sampler(num_steps=4)).pictures[0]
    mask = np.zeros((32, 32), bool)
    mask[9:14, 3:6] = True  # rows 9-13 -> tokens 2-3, cols 3-5 -> tokens 0-1
    rev = studio.revise(source, mask, seed=3, cls=1, cfg=studio.sampler(num_steps=4))
    expect = np.zeros((8, 8), bool)
    expect[2:4, 0:2] = True
    assert np.array_equal(rev.region, expect)
    outside = ~np.broadcast_to(expect, source.labels.shape)
    assert np.array_equal(rev.result.labels[outside], source.labels[outside]) and rev.outside_identical
    assert rev.labels_inside == 4 * 4 and rev.changed_inside > 0
    assert rev.result.condition == 1 and rev.result.steps == 4
    data = np.load(rev.npz(tmp_path / "t.npz"))
    assert np.array_equal(data["labels_out"], rev.result.labels) and np.array_equal(data["region"], expect)
    assert np.array_equal(data["image_in"], source.pixels) and data["mask"].sum() == mask.sum()
    # the returned picture is the decoding of its labels
    decoded = studio.tokenizer.decode_labels(torch.from_numpy(rev.result.labels)[None], target="index").clamp(
        -1, 1
    )
    assert np.abs(im.to_uint8(decoded)[0].astype(int) - rev.result.pixels.astype(int)).max() <= 1


def test_revision_of_an_upload_keeps_its_encoding(studio):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    source = studio.picture_from_upload(im.upscale(pixels, 8), "digit.png")
    assert np.array_equal(source.pixels, pixels) and source.about == "digit.png (encoded)"
    assert np.array_equal(
        source.labels, studio.tokenizer.encode(im.from_uint8(pixels), target="index")[0].numpy()
    )
    mask = np.zeros((32, 32), bool)
    mask[20:, 20:] = True
    rev = studio.revise(source, mask, seed=0, cls=4, cfg=studio.sampler(num_steps=3))
    assert rev.outside_identical and rev.same_outside == 4 * (64 - 9)


def test_bad_input_is_a_message(studio):
    source = studio.generate([0], cfg=studio.sampler(num_steps=2)).pictures[0]
    with pytest.raises(im.StudioInputError, match="the mask is empty"):
        studio.revise(source, np.zeros((32, 32), bool), cls=0)
    with pytest.raises(im.StudioInputError, match="is 40x30 pixels"):
        studio.picture_from_upload(np.zeros((30, 40, 3), np.uint8), "photo.jpg")
    with pytest.raises(im.StudioInputError, match=r"class ids must be in 0\.\.9"):
        studio.generate([12])
    with pytest.raises(im.StudioInputError, match="pick at least one class"):
        studio.generate([])
    with pytest.raises(im.StudioInputError, match="warm-up steps < min steps"):
        studio.sampler(schedule="complexity_aware", complexity_warmup_steps=20, complexity_min_steps=10)
    with pytest.raises(im.StudioInputError, match="temperature"):
        studio.sampler(temperature="hot")


def test_live_view_is_the_grid_sample_step_by_step(studio):
    cfg = studio.sampler(num_steps=5, cfg_scale=2.0)
    frames = list(studio.live(seed=4, cls=6, cfg=cfg))
    assert len(frames) == 6 and frames[-1].done and not any(f.done for f in frames[:-1])
    assert [f.record.index for f in frames[:-1]] == list(range(5)) and len(frames[-1].records) == 5
    grid = studio.generate([6], seed=4, cfg=cfg).pictures[0]
    assert np.array_equal(frames[-1].final.pixels, grid.pixels)
    assert np.array_equal(frames[-2].picture, grid.pixels)  # the map after the last step, decoded
    assert frames[0].picture.shape == (32, 32, 3)


def test_stored_sampler_reads_the_checkpoint_defaults(tiny_c2i_checkpoints, tmp_path):
    ckpt = torch.load(tiny_c2i_checkpoints[0], weights_only=True)
    ckpt["hyper_parameters"]["sampler"] = {"num_steps": 10, "cfg_scale": 2.0, "snr_shift": 1.0}  # an old key
    path = tmp_path / "g.ckpt"
    torch.save(ckpt, path)
    assert stored_sampler(path) == {"num_steps": 10, "cfg_scale": 2.0, "keep_prob_shift": 1.0}
    assert stored_sampler(tmp_path) == {}
    s = Studio(GRNPipeline.from_checkpoint(path), stored_sampler(path))
    assert s.defaults.num_steps == 10 and s.defaults.cfg_scale == 2.0


def test_text_studio_images_videos_and_revision(text_studio):
    s = text_studio
    cfg = s.sampler(num_steps=3, cfg_scale=2.0)
    assert s.kind == "text" and s.stride == 8 and s.num_classes == 0
    grid = s.text_to_image("a handwritten one\na handwritten two", seed=0, cfg=cfg)
    assert len(grid.pictures) == 2 and grid.pictures[0].pixels.shape == (16, 16, 3)
    assert grid.pictures[1].condition == "a handwritten two" and grid.steps == [3, 3]
    clips, seconds, steps = s.video("a one moving left", frames=5, cfg=cfg)
    assert clips.shape == (1, 5, 16, 16, 3) and steps == [3]
    first = grid.pictures[0].pixels
    clips, _, _ = s.video(["a one moving left"], frames=5, first_frame=im.upscale(first, 16), cfg=cfg)
    assert clips.shape == (1, 5, 16, 16, 3)
    with pytest.raises(im.StudioInputError, match="frames must be 1 \\+ 4"):
        s.video("x", frames=4)
    with pytest.raises(im.StudioInputError, match="multiples of 8"):
        s.text_to_image("x", height=12, width=16)
    with pytest.raises(im.StudioInputError, match="write a prompt"):
        s.text_to_image("  \n ")
    mask = np.zeros((16, 16), bool)
    mask[0:3, 0:3] = True  # one token of 2x2
    rev = s.revise(grid.pictures[0], mask, seed=1, prompt="a handwritten nine", cfg=cfg)
    assert rev.region.sum() == 1 and rev.outside_identical and rev.labels_outside == 3 * 8
    frames = list(s.live(seed=0, prompt="a handwritten seven", cfg=s.sampler(num_steps=3)))
    assert len(frames) == 4 and frames[-1].final.pixels.shape == (16, 16, 3)
