"""eval.py: the protocol from config (balanced classes, FID/IS with a stand-in extractor, PNG round trip), the
JSON with every setting, the tokenizer task, and one-line errors. The world-size independence of the batches is
tested with the library, tests/metrics/test_protocol.py."""

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import make_checkpoints  # noqa: E402

from grn.entrypoints.eval import run  # noqa: E402

FAST = ["eval.num_per_class=2", "eval.batch_size=8", "sampler.num_steps=2", "eval.fid.isc_splits=2"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, digits_classifier_file):
    """Tiny checkpoints and the run's shared digits classifier (1 epoch: the tests check plumbing)."""
    folder = tmp_path_factory.mktemp("ckpts")
    gen, tok = make_checkpoints(folder)
    shutil.copyfile(digits_classifier_file, folder / "digits.pt")
    shared = [f"eval.classifier_cache={folder}/digits.pt", f"eval.fid.reference_stats={folder}/ref.npz"]
    return gen, tok, shared


def test_sampler_settings_record_the_resolved_precision(monkeypatch):
    """precision=auto is recorded as the dtype that ran (so the settings digest tells bf16 from fp32 results)."""
    from grn import precision as P
    from grn.entrypoints.eval import sampler_settings

    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert sampler_settings({"precision": "auto", "seed": 3, "num_steps": 2}, "cpu") == {
        "precision": "bf16", "num_steps": 2}
    assert sampler_settings({"precision": "auto"}, "cuda:0")["precision"] == "bf16"
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert sampler_settings({"precision": "auto"}, "cpu")["precision"] == "fp32"
    assert sampler_settings({"precision": "bf16"}, "cpu")["precision"] == "bf16"


def test_eval_writes_metrics_settings_and_grid(compose_cfg, ckpts, tmp_path):
    gen, tok, shared = ckpts
    cfg = compose_cfg(
        "eval", [f"ckpt={gen}", *FAST, *shared, "sampler.cfg_scale=2.0", f"eval.save_images={tmp_path}/pngs"]
    )
    out = run(cfg)
    assert out.parent == gen.parent.parent / "eval" and out.name.startswith("metrics-")
    result = json.loads(out.read_text())
    assert result["num_images"] == 20 and result["world_size"] == 1
    for key in (
        "conditional_accuracy",
        "digits_fid",
        "digits_inception_score",
        "tokenizer_psnr",
        "mean_steps",
    ):
        assert key in result, key
    assert "fid" not in result  # the stand-in's number is never labelled plain FID
    assert result["digits_fid"] > 0 and 1.0 <= result["digits_inception_score"] <= 10.0
    ref = Path(result["fid_reference"]["path"])
    assert ref.is_file() and len(result["fid_reference"]["sha256"]) == 64
    assert result["settings"]["sampler"]["cfg_scale"] == 2.0 and result["settings"]["ema"] == "ema1"
    assert result["settings"]["eval"]["png_round_trip"] is True
    assert result["steps_histogram"] == {"2": 20}
    assert out.with_suffix(".png").is_file()
    assert (
        len(list((tmp_path / "pngs").rglob("*.png"))) == 20 and len(list((tmp_path / "pngs").iterdir())) == 10
    )
    # same settings, same seed -> the same numbers (the reference statistics are now cached)
    again = json.loads(run(cfg).read_text())
    assert (
        again["digits_fid"] == result["digits_fid"]
        and again["conditional_accuracy"] == result["conditional_accuracy"]
    )


def test_eval_missing_inception_weights_is_one_line(compose_cfg, ckpts, tmp_path):
    gen, _, _ = ckpts
    cfg = compose_cfg(
        "eval", [f"ckpt={gen}", "eval=imagenet", f"eval.fid.feature_extractor_weights_path={tmp_path}/x.pth"]
    )
    with pytest.raises(FileNotFoundError) as err:
        run(cfg)
    assert "weights-inception-2015-12-05-6726825d.pth" in str(err.value)
    assert "eval.fid.feature_extractor_weights_path" in str(err.value) and "\n" not in str(err.value)


def test_eval_tokenizer_task_writes_json_and_side_by_side(compose_cfg, ckpts):
    _, tok, shared = ckpts
    cfg = compose_cfg(
        "eval",
        [f"ckpt={tok}", "task=tokenizer", *shared, "eval.recon.num_images=24", "eval.recon.grid_images=6"],
    )
    out = run(cfg)
    result = json.loads(out.read_text())
    assert out.name.startswith("recon-") and result["num_images"] == 24
    for key in ("psnr", "ssim", "l1", "lpips", "digits_rfid"):
        assert key in result, key
    assert result["lpips_stand_in"] is True and result["settings"]["task"] == "tokenizer"
    from PIL import Image

    png = Image.open(result["side_by_side"])
    assert png.size == (2 + 6 * 34, 2 + 2 * 34)  # originals above, reconstructions below
