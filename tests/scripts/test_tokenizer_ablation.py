"""scripts/tokenizer_ablation.py end to end at toy size: runs, result files, PNGs, the report, resuming."""

import json

import pytest

from script_loader import load_script
from tiny_nets import TOY_TINY_JOINT

TOY = TOY_TINY_JOINT


@pytest.fixture(scope="module")
def ablation():
    return load_script("tokenizer_ablation")


def test_toy_ablation_writes_results_pictures_and_report(ablation, tmp_path):
    argv = [
        "--settings", "4", "continuous",
        "--seeds", "0",
        "--steps", "2",
        "--workdir", str(tmp_path / "runs"),
        "--images", str(tmp_path / "images"),
        "--out", str(tmp_path / "report.md"),
        "--verdict", "VERDICT-TEXT",
        *[a for o in TOY for a in ("--override", o)],
    ]  # fmt: skip
    results = ablation.main(argv)
    quantised, continuous = results["4"][0], results["continuous"][0]
    assert quantised["quantize"] and quantised["hbq_rounds"] == 4 and quantised["steps"] == 2
    assert not continuous["quantize"] and continuous["hbq_rounds"] is None
    assert quantised["num_val_images"] == 8 and quantised["num_val_clips"] == 2
    for r in (quantised, continuous):
        for part in ("image", "video"):
            assert 0 < r[part]["psnr"] < 60 and -1 <= r[part]["ssim"] <= 1
    # HBQ at test time on the continuous net: M = 8 is within 2^-8 of the features, so nearly the same output
    assert abs(continuous["post_hoc"]["8"]["image"]["psnr"] - continuous["image"]["psnr"]) < 0.2
    for setting in ("4", "continuous"):
        png = tmp_path / "images" / f"tokenizer_ablation_{setting}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 300_000
    report = (tmp_path / "report.md").read_text()
    assert "| M = 4 |" in report and "| continuous (no HBQ) |" in report and "VERDICT-TEXT" in report
    assert f"{quantised['image']['psnr']:.2f}" in report

    # a second call keeps the finished runs (no retraining) and only rewrites the report
    saved = json.loads((tmp_path / "runs" / "4_seed0.json").read_text())
    again = ablation.main([*argv[:2], *argv[3:]])  # only setting "4"
    assert again["4"][0] == saved
