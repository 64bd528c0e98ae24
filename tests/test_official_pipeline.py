"""The official pipeline call offline: GRNPipeline.from_pretrained(hf_repo_id=..., task=..., model=...) resolves
the official file names through a local Hugging Face cache (HF_HUB_OFFLINE=1) populated with tiny files in the
official layouts, is called with the official argument names, honours the seed, and a missing file is one line."""

from __future__ import annotations

import contextlib
import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from grn.checkpoints.official_t2iv import to_official_keys
from grn.hub import GENERATOR_FILES, OFFICIAL_REPO, TEXT_ENCODER_TOKENIZER, TEXT_ENCODER_WEIGHTS, TOKENIZER_FILE
from grn.models.t2iv import build_t2iv
from grn.models.text_encoder import hf_to_wan_t5, tiny_text_encoder
from grn.models.tokenizer import HBQTokenizer

TINY_TOKENIZER = dict(latent_dim=4, hbq_rounds=4, patch_size=2, enc_channels=8, dec_channels=8,
                      channel_mult=(1, 2, 4, 4), num_res_blocks=1, temporal_downsample=(0, 1, 1))
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate(cache, files: dict[str, object]) -> None:
    """Write ``files`` (repo path -> tensor dict / callable(path)) as a cached snapshot of the official repo."""
    repo = cache / ("models--" + OFFICIAL_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    for name, content in files.items():
        path = snap / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content(path) if callable(content) else torch.save(content, path)


def official_release_files() -> dict[str, object]:
    """Tiny stand-ins of the official T2I 2B / T2V 8B generators, the tokenizer and the umT5 encoder, by repo path
    (seeded: the same files every call)."""
    torch.manual_seed(0)
    text = tiny_text_encoder(dim=32, num_layers=1, num_heads=4, seed=3)
    net = build_t2iv("tiny", latent_dim=4, hbq_rounds=4, target="bits", text_dim=32, block_chunks=2)
    state = {k: torch.randn_like(v) * 0.3 + (1.0 if "norm" in k else 0.0) for k, v in net.state_dict().items()}
    official = to_official_keys(state, block_chunks=2)
    tok = HBQTokenizer(**TINY_TOKENIZER).eval()
    return {
        GENERATOR_FILES[("T2I", "GRN2b")]: official,
        GENERATOR_FILES[("T2V", "GRN8b")]: {"trainer": {"gpt_fsdp": official}},
        TOKENIZER_FILE: {"ema": tok.state_dict()},
        TEXT_ENCODER_WEIGHTS: hf_to_wan_t5(text.model.state_dict()),
        TEXT_ENCODER_TOKENIZER: lambda p: text.tokenizer.save_pretrained(p),
    }


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    populate(cache, official_release_files())
    return cache


@contextlib.contextmanager
def offline_cache(cache, monkeypatch):
    """``HF_HUB_OFFLINE=1`` with the hub cache in ``cache`` (created) for the block; yields ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as C

    importlib.reload(C)  # the hub reads these variables at import
    try:
        yield cache
    finally:
        monkeypatch.undo()
        importlib.reload(C)


@pytest.fixture
def offline(hub_cache, monkeypatch):
    with offline_cache(hub_cache, monkeypatch):
        yield hub_cache


def test_t2i_official_call_resolves_files_and_honours_the_seed(offline):
    from grn.official_pipeline import OfficialTextPipeline
    from grn.pipeline import GRNPipeline

    pipe = GRNPipeline.from_pretrained(hf_repo_id=OFFICIAL_REPO, task="T2I", pn="0.06M", model="GRN2b")
    assert isinstance(pipe, OfficialTextPipeline) and pipe.task == "T2I"
    kw = dict(prompt="a red fox", guidance_scale=2.0, temperature=1.0, complexity_aware_Tmax=3, h_div_w=1.0)
    a, b, c = pipe(seed=5, **kw), pipe(seed=5, **kw), pipe(seed=6, **kw)
    assert len(a.images) == 1 and isinstance(a.images[0], Image.Image) and a.images[0].size == (256, 256)
    assert a.size == (1, 256, 256) and a.videos == []
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))  # same seed, same image
    assert torch.equal(a.labels, b.labels) and not torch.equal(a.labels, c.labels)
    assert a.steps.tolist() == [3]  # Tmax forwards at k = 0
    unseeded = pipe(**kw)
    assert torch.equal(pipe(seed=unseeded.seed, **kw).labels, unseeded.labels)  # the reported seed replays it


def test_complexity_aware_arguments_are_used(offline):
    from grn.pipeline import GRNPipeline

    pipe = GRNPipeline.from_pretrained(hf_repo_id=OFFICIAL_REPO, task="T2I", pn="0.06M")
    # k < 0 with a large b: every sample gets clip(round(k·H + b), Tmin, Tmax) steps, here between 4 and 6
    out = pipe(prompt="a cat", seed=0, complexity_aware_Tmin=4, complexity_aware_Tmax=6, complexity_aware_k=-100.0,
               complexity_aware_b=5.0, complexity_aware_wp=2)
    assert 4 <= int(out.steps[0]) <= 6
    fixed = pipe(prompt="a cat", seed=0, complexity_aware_Tmax=6)
    assert int(fixed.steps[0]) == 6


def test_t2v_8b_from_the_trainer_envelope_writes_an_mp4(offline, tmp_path):
    import av

    from grn.pipeline import GRNPipeline

    pipe = GRNPipeline.from_pretrained(hf_repo_id=OFFICIAL_REPO, task="T2V", pn="0.06M", model="GRN8b")
    out = pipe(prompt="a dog runs", seed=1, duration=0.25, complexity_aware_Tmax=2, h_div_w=9 / 16,
               output_dir=tmp_path)
    assert out.images == [] and len(out.videos) == 1 and out.size == (5, 192, 336)
    with av.open(out.videos[0]) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (192, 336, 3)


def test_missing_file_is_one_line_naming_it(offline):
    from grn.pipeline import GRNPipeline

    with pytest.raises(FileNotFoundError) as err:  # the 8B T2I file is selectable, and not in this cache
        GRNPipeline.from_pretrained(hf_repo_id=OFFICIAL_REPO, task="T2I", model="GRN8b")
    assert "GRN_T2I_titan_FSA_256x256.pth" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="model must be one of"):
        GRNPipeline.from_pretrained(hf_repo_id=OFFICIAL_REPO, task="T2I", model="GRN4b")


def test_first_frame_is_read_at_the_bucket_size_with_lanczos_cover_and_centre_crop(tmp_path):
    from grn.official_pipeline import first_frame_tensor

    img = Image.fromarray((np.random.default_rng(0).random((90, 200, 3)) * 255).astype(np.uint8))
    img.save(tmp_path / "f.png")
    x = first_frame_tensor(tmp_path / "f.png", 48, 64)
    # cover: height fixed at 48, width round(200·48/90) = 107; crop (107 - 64)//2 = 21 from the left
    want = img.resize((107, 48), Image.LANCZOS).crop((21, 0, 85, 48))
    ref = torch.from_numpy(np.asarray(want, dtype=np.float32) / 255.0).permute(2, 0, 1) * 2 - 1
    assert x.shape == (1, 3, 48, 64) and torch.equal(x[0], ref)
    with pytest.raises(FileNotFoundError, match="first frame"):
        first_frame_tensor(tmp_path / "none.png", 48, 64)


def test_official_files_load_with_fsa_attention_and_the_released_sampler(offline):
    from grn.pipeline import GRNPipeline

    pipe = GRNPipeline.from_pretrained(hf_repo_id=OFFICIAL_REPO, task="T2I", pn="0.06M")
    assert pipe.pipe.net.attention == "fsa"  # *_FSA_* files were trained with full attention per sample
    options = pipe.sampler_overrides(3.0, 1.1, 1.0, 10, 50, 0.0, 50.0, 5)
    assert options["schedule"] == "official_t2iv" and options["num_steps"] == 50
    assert options["pt_value"] == "realised" and options["cfg_interval"] == [0.0, 1.0]
    aware = pipe.sampler_overrides(3.0, 1.1, 1.0, 12, 40, -30.0, 45.0, 4)
    assert (aware["schedule"], aware["complexity_min_steps"], aware["complexity_max_steps"], aware["k"], aware["b"],
            aware["complexity_warmup_steps"]) == ("complexity_aware", 12, 40, -30.0, 45.0, 4)


def test_i2v_call_uses_the_first_frame_form_and_returns_the_first_frame(offline, tmp_path):
    """first_frame_condition=True, first_frame_path=... on the T2V 8B file (which serves I2V, §A4): the image is
    read at the bucket size, encoded once, given to the network as clean first-frame tokens in both guidance
    branches (§B5), and the output's first latent frame is its labels (§B9)."""
    from grn.pipeline import GRNPipeline
    from grn.text_pipeline import first_frame_tensor

    pipe = GRNPipeline.from_pretrained(hf_repo_id=OFFICIAL_REPO, task="T2V", pn="0.06M", model="GRN8b")
    net = pipe.pipe.net
    assert net.i2v_mode == "first_frame"
    Image.fromarray((np.random.default_rng(1).random((120, 90, 3)) * 255).astype(np.uint8)).save(tmp_path / "f.png")
    firsts = []
    forward = net.forward
    net.forward = lambda *a, **kw: firsts.append(kw.get("first_frame")) or forward(*a, **kw)
    out = pipe(prompt="a dog runs", seed=2, duration=0.25, complexity_aware_Tmax=2, h_div_w=9 / 16,
               first_frame_condition=True, first_frame_path=tmp_path / "f.png", output_dir=tmp_path)
    frames, height, width = out.size
    want = pipe.pipe.tokenizer.encode(first_frame_tensor(tmp_path / "f.png", height, width).unsqueeze(2),
                                      target="index")
    assert torch.equal(out.labels[:, :, :1], want) and len(out.videos) == 1
    assert len(firsts) == 2 and all(f is not None and f.shape[0] == 2 for f in firsts)  # cond + uncond rows
    with pytest.raises(ValueError, match="first_frame_path"):
        pipe(prompt="x", first_frame_condition=True)


def test_first_frame_read_applies_exif_orientation_as_cv2_does(tmp_path):
    from grn.text_pipeline import first_frame_tensor

    arr = (np.random.default_rng(2).random((40, 60, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    Image.open(tmp_path / "r.jpg").transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")
    torch.testing.assert_close(first_frame_tensor(tmp_path / "r.jpg", 32, 24),
                               first_frame_tensor(tmp_path / "upright.png", 32, 24))
