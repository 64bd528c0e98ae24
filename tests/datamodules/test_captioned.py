"""Captioned digits and moving digits: captions name the content, the digit really moves the stated way."""

import pytest
import torch

from grn.datamodules.captioned import (
    DIGIT_WORDS,
    DIRECTIONS,
    CaptionedDigitsDataModule,
    captioned_digits,
    moving_digits,
)


def test_captions_name_the_digit():
    images, labels, captions = captioned_digits("val", image_size=16)
    assert images.shape == (360, 3, 16, 16) and len(captions) == 360
    assert all(DIGIT_WORDS[y] in c.split() for y, c in zip(labels.tolist(), captions))
    assert len(set(captions)) > 10  # several phrasings per digit


def _centroid(frames):
    """Ink centroid (x, y) per frame of ``[T, S, S]`` images in [-1, 1]."""
    ink = (frames + 1) / 2
    s = ink.shape[-1]
    coords = torch.arange(s, dtype=torch.float32)
    mass = ink.sum((-1, -2))
    return torch.stack([(ink.sum(-2) * coords).sum(-1) / mass, (ink.sum(-1) * coords).sum(-1) / mass], -1)


def test_moving_digits_move_the_captioned_way():
    clips, labels, directions, captions = moving_digits("val", frames=9, image_size=32, digit_size=16)
    assert clips.shape == (360, 3, 9, 32, 32)
    assert clips.min() >= -1 and clips.max() <= 1
    assert torch.bincount(directions, minlength=4).min() >= 89  # balanced directions
    expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for i in range(0, 360, 7):
        assert DIGIT_WORDS[labels[i]] in captions[i] and DIRECTIONS[directions[i]] in captions[i]
        c = _centroid(clips[i, 0])
        move = c[-1] - c[0]
        dx, dy = expected[DIRECTIONS[directions[i]]]
        main = move[0] if dx else move[1]
        other = move[1] if dx else move[0]
        assert main * (dx or dy) > 10 and abs(other) < 1.0  # ~16 px along the stated axis, none across
        # every frame still shows the whole digit (no ink lost at the borders)
        mass = ((clips[i, 0] + 1) / 2).sum((-1, -2))
        assert (mass / mass[0]).sub(1).abs().max() < 0.05


def test_deterministic_and_splits_differ():
    a = moving_digits("train", frames=5, image_size=24, digit_size=12, seed=3)
    b = moving_digits("train", frames=5, image_size=24, digit_size=12, seed=3)
    assert torch.equal(a[0], b[0]) and a[3] == b[3]
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        moving_digits("train", frames=6)


def test_datamodule_batches():
    dm = CaptionedDigitsDataModule(kind="video", frames=5, image_size=24, digit_size=12, batch_size=8)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (8, 3, 5, 24, 24) and len(batch["caption"]) == 8
    assert batch["direction"].shape == (8,)
    img = CaptionedDigitsDataModule(kind="image", image_size=16, batch_size=4)
    img.setup()
    assert next(iter(img.val_dataloader()))["image"].shape == (4, 3, 16, 16)


def test_joint_batches_for_the_tokenizer():
    dm = CaptionedDigitsDataModule(kind="joint", frames=5, image_size=24, digit_size=12, batch_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "video"}
    assert batch["image"].shape == (4, 3, 24, 24) and batch["video"].shape == (4, 3, 5, 24, 24)
