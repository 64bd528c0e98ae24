"""Text pipeline: from_pretrained(task=...), T2I images, T2V clips, I2V keeps the first frame, sample.py -> MP4."""

import av
import pytest
import torch

from grn.pipeline import GRNPipeline
from grn.text_pipeline import TextPipeline


@pytest.fixture(scope="module")
def ckpts(tiny_text_checkpoints):
    return tiny_text_checkpoints


def test_from_pretrained_picks_the_text_pipeline_and_is_reproducible(ckpts):
    pipe = GRNPipeline.from_pretrained(ckpts[0])
    assert isinstance(pipe, TextPipeline) and pipe.task == "t2i"
    a = pipe(["a handwritten one", "a handwritten two"], seed=3, height=16, width=16, num_steps=3, cfg_scale=2.0)
    b = pipe(["a handwritten one", "a handwritten two"], seed=3, height=16, width=16, num_steps=3, cfg_scale=2.0)
    assert a.images.shape == (2, 3, 16, 16) and a.images.min() >= -1 and a.images.max() <= 1
    assert torch.equal(a.images, b.images)
    with pytest.raises(ValueError, match="multiples of 8"):
        pipe(["x"], height=12, width=16)


def test_t2v_clips_and_i2v_first_frame(ckpts):
    pipe = GRNPipeline.from_pretrained(ckpts[0], task="t2v")
    out = pipe(["a handwritten one moving left"], height=16, width=16, frames=5, num_steps=3)
    assert out.images.shape == (1, 3, 5, 16, 16) and out.labels.shape[2] == 2  # 5 frames -> 2 latent frames
    with pytest.raises(ValueError, match="1 \\+ 4"):
        pipe(["x"], height=16, width=16, frames=4)
    i2v = GRNPipeline.from_pretrained(ckpts[0], task="i2v")
    with pytest.raises(ValueError, match="needs image"):
        i2v(["x"], height=16, width=16)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    res = i2v(["a", "b"], image=image, height=16, width=16, frames=9, num_steps=3)
    first = i2v.tokenizer.encode(image.unsqueeze(2), target="index")[:, :, 0]
    assert res.labels.shape[2] == 3
    assert torch.equal(res.labels[:, :, 0], first.expand(2, -1, -1, -1))


def test_sample_cli_writes_mp4(ckpts, tmp_path, compose_cfg):
    from grn.entrypoints.sample import run

    out = tmp_path / "clip.mp4"
    cfg = compose_cfg("sample", [f"ckpt={ckpts[0]}", "prompts=[a handwritten one moving left,a two]",
                                 "mode=t2v", "frames=5", "height=16", "width=16", f"out={out}",
                                 "sampler.num_steps=2"])
    run(cfg)
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape[0] >= 16
    png = tmp_path / "img.png"
    run(compose_cfg("sample", [f"ckpt={ckpts[0]}", "prompts=[a handwritten one]", "height=16", "width=16",
                               f"out={png}", "sampler.num_steps=2"]))
    assert png.stat().st_size > 0


def test_i2v_reads_an_image_file_as_the_official_pipeline_and_takes_either_form(ckpts, tmp_path):
    import numpy as np
    from PIL import Image

    from grn.text_pipeline import first_frame_tensor

    i2v = GRNPipeline.from_pretrained(ckpts[0], task="i2v")
    assert i2v.net.i2v_mode == "region"  # a checkpoint saved before i2v_mode existed: the form it was sampled in
    Image.fromarray((np.random.default_rng(0).random((30, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / "f.png")
    want = i2v.tokenizer.encode(first_frame_tensor(tmp_path / "f.png", 16, 24).unsqueeze(2), target="index")[:, :, 0]
    for mode in ("first_frame", "region"):
        res = i2v(["a"], image=tmp_path / "f.png", height=16, width=24, frames=5, num_steps=2, i2v_mode=mode)
        assert torch.equal(res.labels[:, :, 0], want)
    from_pil = i2v(["a"], image=Image.open(tmp_path / "f.png"), height=16, width=24, frames=5, num_steps=2)
    assert torch.equal(from_pil.labels, res.labels)  # PIL image = file, region form (the network's) both times


def test_t2i_region_regeneration_keeps_the_tokens_outside(ckpts):
    pipe = GRNPipeline.from_pretrained(ckpts[0])
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 9:, 0:3] = 1  # token (1, 0) of the 2x2 grid
    out = pipe(["a handwritten nine"], init=image, mask=mask, height=16, width=16, num_steps=3, cfg_scale=2.0)
    known = pipe.tokenizer.encode(image, target="index")
    region = pipe.latent_region(mask)
    assert region.sum() == 1 and region[0, 0, 1, 0]
    assert torch.equal(out.labels[:, :, 0], known[:, :, 0]) and torch.equal(out.labels[:, :, 1, 1], known[:, :, 1, 1])
    again = pipe(["a handwritten nine"], init_labels=known, mask=mask, height=16, width=16, num_steps=3,
                 cfg_scale=2.0)
    assert torch.equal(again.labels, out.labels)  # the labels stand in for the pixels they encode
    with pytest.raises(ValueError, match="works on images"):
        pipe(["x"], init=image, mask=mask, height=16, width=16, frames=5)
    with pytest.raises(ValueError, match="needs both"):
        pipe(["x"], init=image, height=16, width=16)
