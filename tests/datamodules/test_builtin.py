"""Real built-in digits: fixed stratified split, value range, and the Lightning datamodule's batches."""

import pytest
import torch

from grn.datamodules.builtin import DigitsDataModule, load_digits_split


def _fingerprints(images: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in images}


def test_split_sizes_disjoint_stratified_and_fixed():
    x_tr, y_tr = load_digits_split("train", image_size=8)
    x_va, y_va = load_digits_split("val", image_size=8)
    assert x_tr.shape[0] + x_va.shape[0] == 1797
    assert (x_tr.shape[0], x_va.shape[0]) == (1437, 360)
    # disjoint: all 1,797 raw 8x8 digits are distinct, so comparing pixel fingerprints compares identities
    assert len(_fingerprints(torch.cat([x_tr, x_va]))) == 1797
    assert not (_fingerprints(x_tr) & _fingerprints(x_va))
    # stratified: every class in val, class shares match the whole set within one image per class
    counts_va = torch.bincount(y_va, minlength=10)
    counts_all = counts_va + torch.bincount(y_tr, minlength=10)
    assert (counts_va > 0).all()
    assert ((counts_va.float() - 0.2 * counts_all.float()).abs() <= 1).all()
    # fixed across calls (and independent of the global RNG)
    torch.manual_seed(123)
    x_va2, y_va2 = load_digits_split("val", image_size=8)
    assert torch.equal(x_va, x_va2) and torch.equal(y_va, y_va2)
    # a different seed gives a different split of the same size
    _, y_va3 = load_digits_split("val", image_size=8, seed=1)
    assert y_va3.shape == y_va.shape and not torch.equal(load_digits_split("val", 8, seed=1)[0], x_va)


def test_shapes_dtypes_range_and_look():
    x, y = load_digits_split("train", image_size=32)
    assert x.shape == (1437, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (1437,) and y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x.min() == -1.0 and x.max() > 0.9  # black background, (near-)white ink
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey replicated to RGB
    # white strokes on black: most pixels are background, the corners are empty
    assert (x < 0).float().mean() > 0.6 and x.mean() < -0.3
    assert (x[:, :, 0, 0] == -1).float().mean() > 0.95
    x16, _ = load_digits_split("val", image_size=16)
    assert x16.shape == (360, 3, 16, 16)


def test_bad_split_is_a_clear_error():
    with pytest.raises(ValueError, match="split must be one of"):
        load_digits_split("test")


def test_datamodule_batches_and_determinism():
    dm = DigitsDataModule(image_size=16, batch_size=64, seed=0)
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.image_size == 16
    assert len(dm.train_set) == 1437 and len(dm.val_set) == 360
    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == 1437 // 64  # drop_last
    b = train_batches[0]
    assert set(b) == {"image", "label"}
    assert b["image"].shape == (64, 3, 16, 16) and b["image"].dtype == torch.float32
    assert b["label"].shape == (64,) and b["label"].dtype == torch.int64
    assert b["image"].min() >= -1 and b["image"].max() <= 1

    val_batches = list(dm.val_dataloader())
    assert sum(v["label"].numel() for v in val_batches) == 360  # val keeps the last, partial batch
    assert torch.equal(torch.cat([v["label"] for v in val_batches]), dm.val_set.labels)  # not shuffled

    # shuffled, yet the same order for the same seed, whatever the global RNG does
    assert not torch.equal(torch.cat([t["label"] for t in train_batches]), dm.train_set.labels[: 22 * 64])
    torch.manual_seed(999)
    dm2 = DigitsDataModule(image_size=16, batch_size=64, seed=0)
    dm2.setup("fit")
    again = next(iter(dm2.train_dataloader()))
    assert torch.equal(again["image"], b["image"]) and torch.equal(again["label"], b["label"])
    dm3 = DigitsDataModule(image_size=16, batch_size=64, seed=1)
    dm3.setup("fit")
    assert not torch.equal(next(iter(dm3.train_dataloader()))["label"], b["label"])


def test_datamodule_rejects_batch_larger_than_data():
    with pytest.raises(ValueError, match="exceeds"):
        DigitsDataModule(batch_size=5000).setup("fit")
