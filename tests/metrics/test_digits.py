"""The independent digits classifier: held-out accuracy, conditional accuracy, caching."""

import os
import warnings

import pytest
import torch

import grn.metrics.digits as digits
from grn.datamodules.builtin import load_digits_split
from grn.metrics.digits import (
    DigitsClassifier,
    conditional_accuracy,
    load_or_train_classifier,
    predict,
    train_digits_classifier,
)


@pytest.fixture(scope="module")
def trained(full_digits_classifier_file):
    """The default recipe's classifier (12 epochs, seed 0), trained once per test run (the end-to-end test's
    report reads the same cache file), as ``(model, held-out accuracy)``."""
    blob = torch.load(full_digits_classifier_file, map_location="cpu", weights_only=True)
    model = DigitsClassifier()
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob["val_accuracy"]


def test_classifier_shapes_and_sizes():
    m = DigitsClassifier().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert m(x).shape == (2, 10)
    assert m.features(x).shape == (2, m.feature_dim)
    assert m(torch.rand(2, 3, 64, 64) * 2 - 1).shape == (2, 10)  # other sizes are resized to 32
    assert m(torch.rand(2, 3, 16, 16) * 2 - 1).shape == (2, 10)


def test_trains_to_high_held_out_accuracy(trained):
    model, acc = trained
    assert not model.training
    assert acc >= 0.97
    x_va, y_va = load_digits_split("val")
    assert conditional_accuracy(model, x_va, y_va) == pytest.approx(acc)


def test_conditional_accuracy_real_vs_wrong_labels(trained):
    model, _ = trained
    x_va, y_va = load_digits_split("val")
    assert conditional_accuracy(model, x_va, y_va, batch_size=100) >= 0.97
    g = torch.Generator().manual_seed(0)
    shuffled = y_va[torch.randperm(y_va.numel(), generator=g)]
    assert 0.03 <= conditional_accuracy(model, x_va, shuffled) <= 0.2  # chance level ~0.1
    assert conditional_accuracy(model, x_va, (y_va + 1) % 10) <= 0.03  # always-wrong labels
    sevens = x_va[y_va == 7]
    assert conditional_accuracy(model, sevens, 7) >= 0.9  # one int for all images
    pred = predict(model, x_va, batch_size=64)
    assert pred.dtype == torch.int64 and pred.shape == y_va.shape


def test_robust_to_other_image_sizes_and_small_shifts(trained):
    model, _ = trained
    x16, y16 = load_digits_split("val", image_size=16)
    assert conditional_accuracy(model, x16, y16) >= 0.9
    x_va, y_va = load_digits_split("val")
    shifted = torch.full_like(x_va, -1.0)
    shifted[..., :, 2:] = x_va[..., :, :-2]  # 2 px to the right, background fills in
    assert conditional_accuracy(model, shifted, y_va) >= 0.9


def test_training_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(7)
    before = torch.get_rng_state()
    m1, a1 = train_digits_classifier(epochs=1, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    m2, a2 = train_digits_classifier(epochs=1, seed=3)
    assert a1 == a2
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_load_or_train_caches(tmp_path, monkeypatch):
    path = tmp_path / "cls" / "digits.pt"
    m1, a1 = load_or_train_classifier(path, seed=0, epochs=1)
    assert path.exists() and not m1.training
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"state_dict", "val_accuracy", "config"}
    mtime = os.stat(path).st_mtime_ns

    def no_training(**kw):
        raise AssertionError("a valid cache must not be retrained")

    monkeypatch.setattr(digits, "train_digits_classifier", no_training)
    m2, a2 = load_or_train_classifier(path, seed=0, epochs=1)
    assert a2 == a1 and not m2.training and os.stat(path).st_mtime_ns == mtime
    # the cache key is the resolved recipe: spelling out a default is the same entry
    assert load_or_train_classifier(path, seed=0, epochs=1, lr=3e-3, verbose=True)[1] == a1
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.equal(m1(x), m2(x))


def test_load_or_train_retrains_on_config_change_or_corrupt_cache(tmp_path):
    path = tmp_path / "digits.pt"
    _, a1 = load_or_train_classifier(path, seed=0, epochs=1)
    load_or_train_classifier(path, seed=1, epochs=1)  # different config -> retrained and replaced
    assert torch.load(path, weights_only=True)["config"]["seed"] == 1

    with pytest.raises(TypeError):
        load_or_train_classifier(path, seed=0, epochz=1)  # a typo is an error, not a silent retrain

    path.write_bytes(b"this is not a torch checkpoint")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        _, a3 = load_or_train_classifier(path, seed=0, epochs=1)
    assert a3 == a1  # same seed and recipe -> same model as the first run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten cache now loads cleanly
        _, a4 = load_or_train_classifier(path, seed=0, epochs=1)
    assert a4 == a3
