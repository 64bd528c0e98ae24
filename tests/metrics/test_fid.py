"""FID / IS statistics: closed forms, streaming = batch, the .npz round trip, torch-fidelity parity, clear errors."""

import numpy as np
import pytest
import torch
from scipy import linalg

from grn.metrics.fid import (
    INCEPTION_WEIGHTS_FILE,
    WEIGHTS_CONFIG_KEY,
    FeatureStats,
    FidIsAccumulator,
    InceptionScoreStats,
    build_feature_extractor,
    file_sha256,
    frechet_distance,
    load_reference_stats,
    save_reference_stats,
    to_uint8,
)


def test_frechet_distance_closed_form_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    # for diagonal covariances (S1 S2)^1/2 = diag(sqrt(v1 v2))
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_closed_form_full_covariance():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 8))
    s = a @ a.T + 0.1 * np.eye(8)  # SPD
    mu = rng.normal(size=8)
    # S and c²S commute: tr(S + c²S - 2cS) = (1 - c)² tr(S); the means differ by a known shift
    shift = np.full(8, 0.5)
    assert frechet_distance(mu, s, mu + shift, 4 * s) == pytest.approx(8 * 0.25 + np.trace(s), rel=1e-7)
    # and a general pair against scipy's matrix square root (the pytorch-fid / ADM formula)
    b = rng.normal(size=(8, 8))
    s2 = b @ b.T + 0.1 * np.eye(8)
    ref = ((mu - 1) ** 2).sum() + np.trace(s + s2 - 2 * linalg.sqrtm(s @ s2).real)
    assert frechet_distance(mu, s, np.ones(8), s2) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="differ in dimension"):
        frechet_distance(mu, s, mu[:4], s[:4, :4])


def test_feature_stats_stream_equals_numpy_and_identical_sets_give_zero():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(300, 16, generator=g) @ torch.randn(16, 16, generator=g) + 3.0
    stats = FeatureStats(16)
    for chunk in f.split(37):  # uneven chunks: streaming must not depend on batching
        stats.update(chunk)
    mu, sigma = stats.mu_sigma()
    np.testing.assert_allclose(mu, f.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.double().numpy(), rowvar=False), rtol=1e-9, atol=1e-9)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    other = FeatureStats(16)
    other.update(f + 1.0)  # a pure shift by 1 in every dimension: FID = 16 exactly
    assert frechet_distance(mu, sigma, *other.mu_sigma()) == pytest.approx(16.0, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(4).mu_sigma()


def test_inception_score_matches_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 10, generator=g) * 3
    stats = InceptionScoreStats(10, splits=5)
    index = torch.arange(200)
    for i in range(0, 200, 64):
        stats.update(logits[i : i + 64], index[i : i + 64])
    mean, std = stats.compute()
    # our split of sample i is i % 5; torch-fidelity (no shuffle) takes contiguous chunks: reorder to match
    order = torch.cat([index[index % 5 == s] for s in range(5)])
    ref = isc_features_to_metric(logits[order], splits=5, shuffle=False)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-6)
    # confident, balanced predictions over 10 classes give IS -> 10; identical predictions give 1
    sure = InceptionScoreStats(10, splits=2)
    sure.update(torch.eye(10).repeat(4, 1) * 50, torch.arange(40) // 20)  # each split holds every class twice
    assert sure.compute()[0] == pytest.approx(10.0, rel=1e-6)
    same = InceptionScoreStats(10, splits=2)
    same.update(torch.randn(1, 10).repeat(40, 1), torch.arange(40))
    assert same.compute()[0] == pytest.approx(1.0, abs=1e-9)


def test_reference_stats_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=5), np.cov(rng.normal(size=(50, 5)), rowvar=False)
    path = tmp_path / "ref" / "stats.npz"
    digest = save_reference_stats(path, mu, sigma, extractor="grn-digits", num_images=50)
    ref = load_reference_stats(path)
    np.testing.assert_array_equal(ref.mu, mu)
    np.testing.assert_array_equal(ref.sigma, sigma)
    assert ref.sha256 == digest == file_sha256(path) and len(digest) == 64
    assert str(np.load(path)["extractor"]) == "grn-digits"
    # the ADM / JiT layout: a plain np.savez with mu and sigma (float32 is fine)
    np.savez(tmp_path / "adm.npz", mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    assert load_reference_stats(tmp_path / "adm.npz").mu.dtype == np.float64
    np.savez(tmp_path / "bad.npz", arr_0=mu)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        load_reference_stats(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="scripts/fid_stats.py"):
        load_reference_stats(tmp_path / "missing.npz")


def test_missing_inception_weights_is_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_feature_extractor("inception-v3-compat", tmp_path / "nope.pth")
    msg = str(err.value)
    assert INCEPTION_WEIGHTS_FILE in msg and WEIGHTS_CONFIG_KEY in msg and "\n" not in msg
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_FILE):
        build_feature_extractor("inception-v3-compat", None)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_feature_extractor("no-such-net", None)


def test_to_uint8_is_the_png_round_trip(tmp_path):
    from PIL import Image

    x = torch.rand(2, 3, 8, 8) * 2.2 - 1.1  # out-of-range values are clipped like a PNG writer would
    u = to_uint8(x)
    assert u.dtype == torch.uint8
    Image.fromarray(u[0].permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    back = torch.from_numpy(np.array(Image.open(tmp_path / "a.png"))).permute(2, 0, 1)
    assert torch.equal(back, u[0])
    assert torch.equal(to_uint8(torch.full((1, 3, 1, 1), -1.0)), torch.zeros(1, 3, 1, 1, dtype=torch.uint8))
    assert torch.equal(to_uint8(torch.ones(1, 3, 1, 1)), torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))


@pytest.fixture(scope="module")
def digits_weights(digits_classifier_file):
    return digits_classifier_file


def test_digits_fid_equals_upstream_torch_fidelity(digits_weights):
    """The registered grn-digits extractor gives the same FID / IS through torch-fidelity's own pipeline."""
    import torch_fidelity

    import grn.metrics.digits_extractor  # noqa: F401 - registers "grn-digits" with torch-fidelity
    from grn.datamodules.builtin import load_digits_split

    real = to_uint8(load_digits_split("val")[0][:200])
    shifted = torch.roll(real, shifts=3, dims=-1)  # a visibly different image set

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    upstream = torch_fidelity.calculate_metrics(
        input1=Images(shifted),
        input2=Images(real),
        fid=True,
        isc=True,
        isc_splits=4,
        samples_shuffle=False,
        feature_extractor="grn-digits",
        feature_extractor_weights_path=str(digits_weights),
        cuda=False,
        verbose=False,
        cache=False,
        save_cpu_ram=True,
    )
    extractor = build_feature_extractor("grn-digits", digits_weights)
    ref_acc = FidIsAccumulator(extractor, isc_splits=4)
    ref_acc.update(real, torch.arange(len(real)))
    mu, sigma = ref_acc.fid.mu_sigma()
    acc = FidIsAccumulator(extractor, isc_splits=4, batch_size=48)
    # contiguous chunks of 50 = torch-fidelity's unshuffled splits: give chunk s the indices = s mod 4
    idx = torch.arange(len(shifted)) // 50
    acc.update(shifted, idx)
    from grn.metrics.fid import ReferenceStats

    out = acc.compute(ReferenceStats(mu, sigma, "mem", "-"))
    assert out["fid"] == pytest.approx(upstream["frechet_inception_distance"], rel=1e-4)
    assert out["fid"] > 1.0
    assert out["inception_score_mean"] == pytest.approx(upstream["inception_score_mean"], rel=1e-4)
    assert out["num_images"] == 200
    same = FidIsAccumulator(extractor)
    same.update(real, torch.arange(len(real)))
    assert abs(same.compute(ReferenceStats(mu, sigma, "mem", "-"))["fid"]) < 1e-3
