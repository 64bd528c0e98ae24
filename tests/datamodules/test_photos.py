"""Real offline skimage data for the tokenizer: photo crops split by photo, GIF clips split by time, joint batches."""

import pytest
import torch
from hydra.utils import instantiate

from grn.datamodules.photos import (
    GifClipsDataModule,
    PhotosDataModule,
    PhotosGifDataModule,
    RandomClips,
    RandomCrops,
    fixed_clips,
    load_gif_frames,
    load_photos,
)

SMALL = {
    "photos": ["astronaut", "rocket", "chelsea"],
    "val_photos": ["chelsea"],
    "short_side": 64,
    "crop_size": 16,
}


def first_batch(loader):
    return next(iter(loader))


def contains_window(source: torch.Tensor, window: torch.Tensor) -> bool:
    """Whether ``window [..., h, w]`` (or its horizontal flip) is a crop of ``source [..., H, W]`` (exact)."""
    h, w = window.shape[-2:]
    patches = source.unfold(-2, h, 1).unfold(-2, w, 1)  # [..., H-h+1, W-w+1, h, w]
    patches = patches.movedim((-4, -3), (0, 1)).flatten(0, 1)  # [P, ..., h, w]
    return any(bool((patches == win).flatten(1).all(1).any()) for win in (window, window.flip(-1)))


def test_photo_batches_shapes_range_and_split_by_photo():
    dm = PhotosDataModule(**SMALL, batch_size=4, val_grid=2)
    batch = first_batch(dm.train_dataloader())
    assert set(batch) == {"image"} and batch["image"].shape == (4, 3, 16, 16)
    assert batch["image"].dtype == torch.float32 and batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert dm.train_names == ["astronaut", "rocket"] and dm.val_names == ["chelsea"]
    # the training crops come only from the training photos, the val crops only from the held-out one
    train_photos, (val_photo,) = load_photos(["astronaut", "rocket"], 64), load_photos(["chelsea"], 64)
    for crop in batch["image"]:
        assert any(contains_window(p, crop) for p in train_photos)
        assert not contains_window(val_photo, crop)
    val = torch.cat([b["image"] for b in dm.val_dataloader()])
    assert val.shape == (4, 3, 16, 16)  # a 2x2 grid on one photo
    assert all(contains_window(val_photo, crop) for crop in val)
    torch.testing.assert_close(val[0], val_photo[:, :16, :16])  # the grid starts at the corner


def test_crops_are_a_function_of_seed_and_index():
    photos = load_photos(["astronaut", "rocket"], 64)
    a, b, c = (RandomCrops(photos, 16, 100, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(10))
    assert any(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(10))
    assert len({a[i]["image"].sum().item() for i in range(20)}) > 15  # different crops per index
    dm1, dm2 = PhotosDataModule(**SMALL, batch_size=4), PhotosDataModule(**SMALL, batch_size=4)
    torch.testing.assert_close(first_batch(dm1.train_dataloader()), first_batch(dm2.train_dataloader()))


def test_flips_happen_and_can_be_turned_off():
    # a single photo and a crop as large as it: the only randomness left is the flip
    photo = load_photos(["astronaut"], 16)
    flipped = [
        not torch.equal(RandomCrops(photo, 16, 64, flip=True)[i]["image"], photo[0]) for i in range(64)
    ]
    assert 10 < sum(flipped) < 54
    assert all(torch.equal(RandomCrops(photo, 16, 8, flip=False)[i]["image"], photo[0]) for i in range(8))


def test_grey_photos_become_rgb_or_are_skipped():
    (camera,) = load_photos(["camera"], 32, grey="rgb")
    assert camera.shape == (3, 32, 32)
    torch.testing.assert_close(camera[0], camera[1])
    assert len(load_photos(["camera", "astronaut"], 32, grey="skip")) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"photos": ["no_such_photo", "astronaut"], "val_photos": ["astronaut"]}, "unknown skimage photo"),
        ({"photos": ["astronaut"], "val_photos": ["rocket"]}, "not in photos"),
        ({"photos": ["astronaut"], "val_photos": ["astronaut"]}, "at least one training"),
        (
            {"photos": ["astronaut", "rocket"], "val_photos": ["rocket"], "short_side": 32, "crop_size": 64},
            "smaller than",
        ),
    ],
)
def test_bad_photo_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        PhotosDataModule(**kwargs).setup("fit")
    assert "\n" not in str(err.value)


def test_gif_clips_split_by_time():
    frames = load_gif_frames(32)
    assert frames.shape == (3, 24, 57, 32) and frames.min() >= -1 and frames.max() <= 1
    dm = GifClipsDataModule(clip_frames=5, crop_size=16, short_side=32, val_frames=10, batch_size=3)
    batch = first_batch(dm.train_dataloader())
    assert set(batch) == {"video"} and batch["video"].shape == (3, 3, 5, 16, 16)
    train_frames, held_out = frames[:, :14], frames[:, 14:]
    for clip in batch["video"]:
        # 5 consecutive training frames, one crop: find the time offset, then the window
        starts = [t for t in range(10) if contains_window(train_frames[:, t : t + 5], clip)]
        assert starts, "a training clip is not a window of the training frames"
    val = torch.cat([b["video"] for b in dm.val_dataloader()])
    assert val.shape == (2, 3, 5, 16, 16)  # the 10 held-out frames: two non-overlapping clips
    torch.testing.assert_close(val, fixed_clips(held_out, 5, 16))
    torch.testing.assert_close(val[1, :, 0], held_out[:, 5, 20:36, 8:24])  # centre crop of frame 19


def test_gif_settings_are_checked():
    with pytest.raises(ValueError, match="val_frames"):
        GifClipsDataModule(val_frames=24).setup()
    with pytest.raises(ValueError, match="cannot hold a clip"):
        GifClipsDataModule(clip_frames=17, val_frames=9).setup()
    with pytest.raises(ValueError, match="cannot hold a clip"):
        RandomClips(load_gif_frames(32)[:, :3], clip_frames=5, crop_size=16, length=4)


def test_joint_batches_carry_both_parts_and_val_covers_every_held_out_item():
    dm = PhotosGifDataModule(
        photos={**SMALL, "batch_size": 3, "val_grid": 2},
        gif={"clip_frames": 5, "crop_size": 16, "val_frames": 10, "batch_size": 1},
    )
    batch = first_batch(dm.train_dataloader())
    assert batch["image"].shape == (3, 3, 16, 16) and batch["video"].shape == (1, 3, 5, 16, 16)
    val = list(dm.val_dataloader())
    assert all(set(b) == {"image", "video"} for b in val)
    seen_images = torch.cat([b["image"] for b in val])
    seen_clips = torch.cat([b["video"] for b in val])
    for x in dm.photos.val_images():
        assert any(torch.equal(x, y) for y in seen_images)
    for x in dm.gif.val_clips():
        assert any(torch.equal(x, y) for y in seen_clips)


@pytest.mark.parametrize(
    "name, keys", [("photos", {"image"}), ("gif", {"video"}), ("photos_gif", {"image", "video"})]
)
def test_data_configs_instantiate(compose_cfg, name, keys):
    cfg = compose_cfg("train", [f"data={name}", "task=tokenizer"])
    dm = instantiate(cfg.data)
    batch = first_batch(dm.train_dataloader())
    assert set(batch) == keys
