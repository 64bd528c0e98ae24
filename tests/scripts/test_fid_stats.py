"""scripts/fid_stats.py: reference statistics from WebDataset shards and from an image folder agree, bad samples are
skipped and counted, and a missing Inception file is one clear line."""

import io
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from grn.metrics.fid import FidIsAccumulator, build_feature_extractor, load_reference_stats, to_uint8

from script_loader import load_script

fid_stats = load_script("fid_stats")


@pytest.fixture(scope="module")
def digits(tmp_path_factory, digits_classifier_file):
    """40 real digits as PNG bytes + the run's tiny digits classifier (the stand-in extractor's weights)."""
    from grn.datamodules.builtin import load_digits_split

    folder = tmp_path_factory.mktemp("fidstats")
    weights = folder / "digits.pt"
    shutil.copyfile(digits_classifier_file, weights)
    x, y = load_digits_split("val")
    pixels = to_uint8(x[:40])
    pngs = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return folder, weights, pixels, pngs, y[:40]


# Tolerance for FID statistics computed from the same images along different paths (batch size, thread count,
# CPU kernel: oneDNN/AMX vs avx2). The features are float32 (unit roundoff u = 6e-8) out of dot products up to
# K = 1024 long whose summation order depends on the batching and the kernel; such a sum is off by about
# sqrt(K)·u ≈ 2e-6 of the magnitude of its terms (K·u ≈ 6e-5 at worst); accumulating mu / sigma in float64
# adds nothing measurable. Measured between batch sizes 1, 3, 7, 16 and 40 (avx512 and avx2, 1 and 2
# threads): up to 5.5e-8; 8.6e-8 was reported on a CPU with AMX. The error is relative to the features'
# scale, not to each entry (a third of the features are dead ReLUs, so entries of mu and sigma are 0 or the
# result of cancellation), hence the atol. A real error stays far above it: one wrong image or one missing
# sample out of 40 moves mu / sigma by ~1e-2 of that scale (asserted in the test).
STATS_TOL = 1e-5


def assert_same_stats(mu_a, sigma_a, mu_b, sigma_b) -> None:
    """mu and sigma agree to STATS_TOL of the features' scale (the largest feature's root mean square)."""
    second_moment = float(np.max(np.diag(sigma_b) + mu_b**2))  # E[f_i^2] of the largest feature
    np.testing.assert_allclose(mu_a, mu_b, rtol=STATS_TOL, atol=STATS_TOL * second_moment**0.5)
    np.testing.assert_allclose(sigma_a, sigma_b, rtol=STATS_TOL, atol=STATS_TOL * second_moment)


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_shards_and_folder_give_the_same_statistics(digits, tmp_path):
    folder, weights, pixels, pngs, labels = digits
    for s in range(2):  # two class-image shards of 20 samples each, plus one corrupt sample
        with tarfile.open(tmp_path / f"shard-{s}.tar", "w") as tar:
            for i in range(s * 20, s * 20 + 20):
                add(tar, f"{i:05d}.png", pngs[i])
                add(tar, f"{i:05d}.cls", str(int(labels[i])).encode())
            if s == 1:
                add(tar, "99999.png", b"not a png")
    images = tmp_path / "images" / "sub"
    images.mkdir(parents=True)
    for i, data in enumerate(pngs):
        (images / f"{i:05d}.png").write_bytes(data)
    (images / "broken.png").write_bytes(b"\x89PNG broken")

    common = ["--extractor", "grn-digits", "--weights", str(weights), "--batch-size", "16"]
    shards = str(tmp_path / "shard-{0..1}.tar")
    assert fid_stats.main(["--shards", shards, "--out", str(tmp_path / "a.npz"), *common]) == 0
    assert (
        fid_stats.main(["--folder", str(tmp_path / "images"), "--out", str(tmp_path / "b.npz"), *common]) == 0
    )
    a, b = load_reference_stats(tmp_path / "a.npz"), load_reference_stats(tmp_path / "b.npz")
    assert_same_stats(a.mu, a.sigma, b.mu, b.sigma)
    with np.load(tmp_path / "a.npz") as meta:
        assert (
            int(meta["num_images"]) == 40
            and int(meta["skipped"]) == 1
            and str(meta["extractor"]) == "grn-digits"
        )
    with np.load(tmp_path / "b.npz") as meta:
        assert int(meta["skipped"]) == 1
    # the same numbers as feeding the images directly (one batch of 40, not 16 + 16 + 8: other kernels)
    extractor = build_feature_extractor("grn-digits", weights)

    def direct(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        acc = FidIsAccumulator(extractor)
        acc.update(images, torch.arange(len(images)))
        return acc.fid.mu_sigma()

    assert_same_stats(a.mu, a.sigma, *direct(pixels))
    # ... and the tolerance still sees a real error: one wrong image (a neighbour's), or one sample missing
    wrong = pixels.clone()
    wrong[7] = pixels[8]
    for images in (wrong, pixels[:39]):
        with pytest.raises(AssertionError):
            assert_same_stats(a.mu, a.sigma, *direct(images))


def test_resize_and_crop_and_max_images(digits, tmp_path):
    _, weights, _, pngs, _ = digits
    (tmp_path / "imgs").mkdir()
    for i, data in enumerate(pngs[:10]):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(data)
    wide = Image.new("RGB", (60, 40), (10, 20, 30))
    wide.save(tmp_path / "imgs" / "wide.png")  # another size: made square by --image-size
    out = tmp_path / "c.npz"
    args = [
        "--folder",
        str(tmp_path / "imgs"),
        "--out",
        str(out),
        "--extractor",
        "grn-digits",
        "--weights",
        str(weights),
    ]
    assert fid_stats.main([*args, "--image-size", "24", "--max-images", "8"]) == 0
    with np.load(out) as meta:
        assert int(meta["num_images"]) == 8 and str(meta["image_size"]) == "24"
    assert fid_stats.main(args) == 2  # mixed sizes without --image-size: a clear error, no file


def test_missing_inception_weights(tmp_path, capsys):
    code = fid_stats.main(
        ["--folder", str(tmp_path), "--out", str(tmp_path / "x.npz"), "--weights", str(tmp_path / "w.pth")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "weights-inception-2015-12-05-6726825d.pth" in err and err.count("\n") == 1
    assert not (tmp_path / "x.npz").exists()
