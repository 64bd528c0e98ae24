"""Text token caches: tokens and caption features of text–image / text–video shards encoded once, read back per
bucket with the caption still drawn by the official rules; bad samples skipped and counted; T2I and T2V training
from text shards end to end without loading either encoder."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from grn.datamodules.builtin import load_digits_split
from grn.datamodules.captioned import DIGIT_WORDS, moving_digits
from grn.datamodules.text import TextImageDataModule, TextVideoDataModule, caption_candidates
from grn.datamodules.text_tokens import TextTokenShardDataModule, ensure_text_token_cache, iter_cache_samples
from grn.datamodules.video import encode_mp4
from grn.datamodules.writers import write_shards

from script_loader import load_script
from shard_helpers import logged_values, tiny_tokenizer_ckpt

TEXT = {"_target_": "grn.models.text_encoder.tiny_text_encoder", "dim": 32, "num_layers": 1, "num_heads": 4}
SHAPES = [(64, 64), (36, 64), (64, 36)]  # square, landscape 9:16, portrait 16:9


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def text_image_samples(n: int, bad: bool = False) -> list[dict]:
    """Real digits pasted on frames of three aspect ratios, with a long and a short caption."""
    x, y = load_digits_split("train", image_size=32)
    out = []
    for i in range(n):
        h, w = SHAPES[i % 3]
        frame = np.zeros((h, w, 3), np.uint8)
        digit = ((x[i].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
        top, left = (h - 32) // 2, (w - 32) // 2
        frame[top : top + 32, left : left + 32] = digit
        word = DIGIT_WORDS[int(y[i])]
        out.append({"__key__": f"s{i:04d}", "png": _png(frame),
                    "json": {"long_caption": f"a handwritten {word} on a black frame", "text": word}})
    if bad:
        out[5]["png"] = b"\x89PNG not an image"         # corrupt: skipped and counted
        out[7]["json"] = {"long_caption": 3}               # a caption of the wrong type
    return out


@pytest.fixture(scope="module")
def text_image_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("text_image")
    write_shards(text_image_samples(36, bad=True), out, max_count=12)
    return str(out / "shard-{000000..000002}.tar")


@pytest.fixture(scope="module")
def text_video_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("text_video")
    clips, labels, _, captions = moving_digits("train", frames=9, image_size=32, digit_size=16)
    samples = []
    for i in range(8):
        frames = ((clips[i].permute(1, 2, 3, 0).numpy() + 1) * 127.5).astype(np.uint8)  # [T, H, W, 3]
        meta = {"tarsier2_caption": captions[i], "MiniCPM_V_2_6_caption": f"digit {DIGIT_WORDS[int(labels[i])]}",
                "quality_prompt": "sharp.", "begin_frame_id": 0, "end_frame_id": 9, "fps": 8, "height": 32,
                "width": 32}
        samples.append({"__key__": f"v{i:03d}", "mp4": encode_mp4(frames, 8), "json": json.dumps(meta)})
    write_shards(samples, out, max_count=4)
    return str(out / "shard-{000000..000001}.tar")


def _image_source(pattern, **kw):
    args = dict(train_shards=pattern, pn=4, stride=8, batch_size=4, resampled=True, epoch_samples=32,
                shuffle_buffer=8, shuffle_initial=4, seed=0)
    return TextImageDataModule(**{**args, **kw})


def _encoders(tok_ckpt):
    from hydra.utils import instantiate

    from grn.checkpoints import load_tokenizer

    return load_tokenizer(tok_ckpt), instantiate(TEXT)


def test_cache_holds_the_encoders_outputs_and_every_caption(tmp_path, text_image_shards):
    tok_ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt", config="tiny_joint")
    source = _image_source(text_image_shards)
    cache = ensure_text_token_cache(source, tok_ckpt, TEXT, tmp_path / "cache", batch_size=5)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["splits"]["train"]["num_samples"] == 34
    assert meta["splits"]["train"]["bad_samples"] == {"decode_image": 1, "wrong_type": 1}
    assert meta["kind"] == "image" and meta["text_dim"] == 32 and meta["latent_dim"] == 8

    tokenizer, encoder = _encoders(tok_ckpt)
    pixels = {}
    view = source.single_pass("train", 5)
    for batch in view.train_dataloader():
        for key, x in zip(batch["key"], batch["image"]):
            pixels[key] = x
    for sample in iter_cache_samples(cache):
        info = json.loads(sample["json"])
        assert info["captions"] == caption_candidates("image", info["fields"]) and len(info["captions"]) == 2
        from grn.datamodules.token_shards import unpack_tokens

        expected = tokenizer.encode(pixels[sample["__key__"]][None], target="index")[0]
        assert torch.equal(unpack_tokens(sample["tok"]), expected)
        feats = np.load(io.BytesIO(sample["text.npy"]))
        want = torch.cat(encoder.encode_texts(info["captions"]))
        assert feats.dtype == np.float16 and feats.shape == tuple(want.shape)
        torch.testing.assert_close(torch.from_numpy(feats).float(), want, atol=2e-3, rtol=2e-3)
    null = torch.from_numpy(np.load(cache / "null.npy")).float()
    torch.testing.assert_close(null, encoder.encode_texts([""])[0], atol=2e-3, rtol=2e-3)

    # a second call finds the cache: neither encoder is loaded again
    from grn import checkpoints

    def boom(*a, **k):
        raise AssertionError("the cache should have been reused")

    orig = checkpoints.load_tokenizer
    checkpoints.load_tokenizer = boom
    try:
        assert ensure_text_token_cache(_image_source(text_image_shards), tok_ckpt, TEXT, tmp_path / "cache") == cache
    finally:
        checkpoints.load_tokenizer = orig
    # another text encoder or dtype is another cache
    other = ensure_text_token_cache(source, tok_ckpt, {**TEXT, "seed": 1}, tmp_path / "cache", text_dtype="float32")
    assert other != cache and np.load(io.BytesIO(next(iter_cache_samples(other))["text.npy"])).dtype == np.float32


def test_reader_batches_are_bucketed_padded_and_draw_captions(tmp_path, text_image_shards):
    tok_ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt", config="tiny_joint")
    cache = ensure_text_token_cache(_image_source(text_image_shards), tok_ckpt, TEXT, tmp_path / "cache")
    _, encoder = _encoders(tok_ckpt)
    dm = TextTokenShardDataModule(str(cache), short_caption_prob=0.5, batch_size=4, resampled=True,
                                  epoch_samples=64, shuffle_buffer=8, seed=0)
    shapes, short, total = set(), 0, 0
    for batch in (dm.record(b) for b in dm.train_dataloader()):
        tokens, text, lens = batch["tokens"], batch["text"], batch["text_lens"]
        assert tokens.dtype == torch.int64 and tokens.shape[:2] == (4, 8)
        shapes.add(tuple(tokens.shape[2:]))
        assert text.shape[0] == 4 and text.shape[1] == int(lens.max()) and text.shape[2] == 32
        for caption, row, n in zip(batch["caption"], text, lens.tolist()):
            torch.testing.assert_close(row[:n].float(), encoder.encode_texts([caption])[0], atol=2e-3, rtol=2e-3)
            assert not row[n:].any()  # zero padding
            short += " " not in caption
            total += 1
        assert batch["null_text"].shape == (1, 32)  # "" -> the end token only
    # 32x32 digits on 64x64, 36x64, 64x36 frames: three buckets of 4x4 token sides at stride 8
    assert shapes == {(4, 4), (3, 5), (5, 3)}
    assert 0.3 < short / total < 0.7  # short_caption_prob = 0.5, drawn at read time
    assert dm.bad_samples == {k: 0 for k in dm.bad_samples}


def test_reader_skips_and_counts_damaged_cache_samples(tmp_path, text_image_shards):
    tok_ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt", config="tiny_joint")
    cache = ensure_text_token_cache(_image_source(text_image_shards), tok_ckpt, TEXT, tmp_path / "cache")
    samples = list(iter_cache_samples(cache))
    clean = [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"} for s in samples]
    clean[0]["text.npy"] = clean[0]["text.npy"][:40]        # truncated features
    del clean[1]["tok"]                                       # missing tokens
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    write_shards(clean, damaged, prefix="train", max_count=100)
    meta = json.loads((cache / "meta.json").read_text())
    meta["splits"] = {"train": {"shards": ["train-000000.tar"], "num_samples": len(clean)}}
    (damaged / "meta.json").write_text(json.dumps(meta))
    (damaged / "null.npy").write_bytes((cache / "null.npy").read_bytes())
    dm = TextTokenShardDataModule(str(damaged), batch_size=2, resampled=False, shuffle_buffer=0, drop_last=False)
    keys = [k for b in dm.train_dataloader() for k in dm.record(b)["key"]]
    assert len(keys) == len(clean) - 2 and samples[0]["__key__"] not in keys
    assert dm.bad_samples["wrong_type"] == 1 and dm.bad_samples["missing_key"] == 1


def test_video_cache_keeps_both_captions(tmp_path, text_video_shards):
    tok_ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt", config="tiny_joint")
    source = TextVideoDataModule(train_shards=text_video_shards, num_frames=9, fps=8, pn=4, stride=8, batch_size=2,
                                 resampled=False, shuffle_buffer=0)
    cache = ensure_text_token_cache(source, tok_ckpt, TEXT, tmp_path / "cache")
    dm = TextTokenShardDataModule(str(cache), batch_size=4, resampled=True, epoch_samples=64, shuffle_buffer=0)
    seen = set()
    for batch in (dm.record(b) for b in dm.train_dataloader()):
        assert batch["tokens"].shape == (4, 8, 3, 4, 4)  # 9 frames -> 1 + 2 latent frames; 32 px -> 4 tokens
        seen.update(batch["caption"])
    assert any(c.startswith("digit ") for c in seen) and any("moving" in c or "sliding" in c for c in seen)
    assert all(c.endswith(" sharp.") for c in seen)  # the quality prompt is appended to either caption


@pytest.mark.parametrize("task", ["t2i", "t2v"])
def test_training_from_text_shards_never_loads_an_encoder_twice(compose_cfg, tmp_path, monkeypatch, task,
                                                                 text_image_shards, text_video_shards):
    """``train.py task=t2i|t2v data=text_image|text_video``: the cache is built in prepare_data (one tokenizer and
    one text-encoder load), the module never loads the text encoder, and a second run reuses the cache."""
    from grn.entrypoints.train import train_stage
    from grn.models import text_encoder as te

    tok_ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt", config="tiny_joint")
    data = (["data=text_image", f"data.train_shards='{text_image_shards}'", "data.pn=4", "data.stride=8",
             f"data.val_shards='{text_image_shards}'"]  # a val split too: cached, and validated on at step 3
            if task == "t2i" else
            ["data=text_video", f"data.train_shards='{text_video_shards}'", "data.pn=4", "data.stride=8",
             "data.num_frames=9", "data.fps=8"])
    overrides = [f"task={task}", "model/generator=t2iv_tiny", "model/tokenizer=tiny_joint",
                 "model/text_encoder=tiny", "trainer=cpu", "logger=csv", "callbacks=none",
                 f"stages.{task}.tokenizer_ckpt={tok_ckpt}", f"stages.{task}.max_steps=3",
                 f"stages.{task}.lit_module.lr_scheduler.warmup_steps=0", f"stages.{task}.lit_module.lr=1e-3",
                 "data.batch_size=2", "data.num_workers=0", "data.epoch_samples=16", "data.shuffle_buffer=4",
                 "data.pin_memory=false", "trainer.log_every_n_steps=1", *data]
    loads = []
    real = te.tiny_text_encoder
    monkeypatch.setattr(te, "tiny_text_encoder", lambda **kw: loads.append(kw) or real(**kw))

    for run in ("first", "second"):
        cfg = compose_cfg("train", [*overrides, f"paths.run_dir={tmp_path / run}"])  # two fresh runs
        last = train_stage(cfg, task)
        state = torch.load(last, map_location="cpu", weights_only=False)
        assert state["global_step"] == 3
        losses = logged_values(cfg.paths.run_dir, "train/loss")
        assert len(losses) == 3 and all(np.isfinite(losses))
        if task == "t2i":
            val = logged_values(cfg.paths.run_dir, "val/loss")
            assert len(val) == 1 and np.isfinite(val[0])
    assert len(loads) == 1  # the cache build; neither training run instantiated the encoder
    caches = list((tmp_path / "cache" / "text_tokens").iterdir())
    assert len(caches) == 1 and (caches[0] / "meta.json").is_file()


def test_script_builds_the_cache_training_reads(compose_cfg, tmp_path, monkeypatch, text_image_shards):
    """scripts/cache_text_tokens.py ahead of time, then `train.py task=t2i data=text_image` with the same settings
    finds that cache (nothing is encoded again)."""
    from hydra.utils import instantiate

    from grn import checkpoints

    tok_ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt", config="tiny_joint")
    script = vars(load_script("cache_text_tokens"))
    result = script["main"](["--tokenizer", str(tok_ckpt), "--shards", text_image_shards, "--pn", "4", "--stride",
                             "8", "--text-encoder", "tiny", "--cache-root", str(tmp_path / "cache"), "--device", "cpu"])
    assert result["splits"]["train"]["num_samples"] == 34
    # missing inputs end the script with one line naming them, not a traceback
    with pytest.raises(SystemExit, match=r"^error: tokenizer checkpoint not found: .*nope\.ckpt$"):
        script["main"](["--tokenizer", str(tmp_path / "nope.ckpt"), "--shards", text_image_shards])
    monkeypatch.setenv("GRN_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    with pytest.raises(SystemExit, match=r"^error: umT5-XXL encoder weights not found: .*no-weights"):
        script["main"](["--tokenizer", str(tok_ckpt), "--shards", text_image_shards, "--text-encoder", "umt5_xxl",
                        "--cache-root", str(tmp_path / "cache2")])

    def boom(*a, **k):
        raise AssertionError("the script's cache should have been found")

    monkeypatch.setattr(checkpoints, "load_tokenizer", boom)
    cfg = compose_cfg("train", ["task=t2i", "model/generator=t2iv_tiny", "model/tokenizer=tiny_joint",
                                "model/text_encoder=tiny", "data=text_image", f"data.train_shards='{text_image_shards}'",
                                "data.pn=4", "data.stride=8", f"stages.t2i.tokenizer_ckpt={tok_ckpt}"])
    dm = instantiate(cfg.stages.t2i.datamodule)
    assert dm.provides_text_features and str(dm._text_cache()) == result["cache"]


def test_joint_text_shards_train_on_both_parts_and_resume_exactly(compose_cfg, tmp_path, text_image_shards,
                                                                  text_video_shards):
    """``task=t2v data=text_joint``: both parts cached, read in step as {"image", "video"} batches; both per-kind
    losses are logged; the joint data position restores each part exactly."""
    from hydra.utils import instantiate

    from grn.entrypoints.train import train_stage

    tok_ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt", config="tiny_joint")
    overrides = ["task=t2v", "model/generator=t2iv_tiny", "model/tokenizer=tiny_joint", "model/text_encoder=tiny",
                 "trainer=cpu", "logger=csv", "callbacks=none", "trainer.log_every_n_steps=1",
                 f"stages.t2v.tokenizer_ckpt={tok_ckpt}", "stages.t2v.max_steps=2",
                 "stages.t2v.lit_module.lr_scheduler.warmup_steps=0", "data=text_joint",
                 f"data.image.train_shards='{text_image_shards}'", f"data.video.train_shards='{text_video_shards}'",
                 "data.video.pn=4", "data.image.stride=8", "data.video.stride=8", "data.video.num_frames=9",
                 "data.video.fps=8", "data.image.batch_size=3", "data.video.batch_size=2",
                 "data.image.epoch_samples=30", "data.video.epoch_samples=16", "data.image.shuffle_buffer=4",
                 "data.video.shuffle_buffer=4", "data.image.num_workers=0", "data.video.num_workers=0",
                 "data.image.pin_memory=false", "data.video.pin_memory=false", f"paths.run_dir={tmp_path / 'run'}"]
    cfg = compose_cfg("train", overrides)
    train_stage(cfg, "t2v")
    for name in ("train/loss_image", "train/loss_video"):
        values = logged_values(tmp_path / "run", name)
        assert len(values) == 2 and all(np.isfinite(values))

    def keys(dm, n):
        it = iter(dm.train_dataloader())
        out = []
        for _ in range(n):
            batch = dm.on_before_batch_transfer(next(it), 0)
            assert batch["image"]["tokens"].dim() == 4 and batch["video"]["tokens"].shape[1:3] == (8, 3)
            out.append((tuple(batch["image"]["key"]), tuple(batch["video"]["key"])))
        return out

    def fresh():
        dm = instantiate(cfg.stages.t2v.datamodule)
        dm.prepare_data()
        dm.setup("fit")
        return dm

    full = keys(fresh(), 5)  # an epoch is the shorter part: 16 clips / 2 = 8 video batches, 30 / 3 = 10 image ones
    first = fresh()
    head = keys(first, 2)
    resumed = fresh()
    resumed.load_state_dict(first.state_dict())
    assert head + keys(resumed, 3) == full
    assert len(first.train_dataloader()) == 8


def test_reader_packs_shapes_together_under_the_budget(tmp_path, text_image_shards):
    """``packing`` (official update §C9): each batch is one packed sequence of mixed shapes within the budget,
    with the features padded per sample; the windows are packed two-pointer."""
    from grn.datamodules.seq_packing import pack_two_pointer, sample_tokens

    tok_ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt", config="tiny_joint")
    cache = ensure_text_token_cache(_image_source(text_image_shards), tok_ckpt, TEXT, tmp_path / "cache")
    dm = TextTokenShardDataModule(str(cache), short_caption_prob=0.0, batch_size=4, resampled=False,
                                  shuffle_buffer=0, drop_last=False, packing={"budget": 120, "window": 34})
    batches = [dm.record(b) for b in dm.train_dataloader()]
    counts, mixed, packs = [], False, []
    for batch in batches:
        assert batch["rows"] == [list(range(len(batch["tokens"])))]
        n = [sample_tokens(t, int(k)) for t, k in zip(batch["tokens"], batch["text_lens"])]
        assert sum(n) <= 120 and batch["text"].shape[:2] == (len(n), int(batch["text_lens"].max()))
        mixed |= len({tuple(t.shape) for t in batch["tokens"]}) > 1
        counts.extend(n)
        packs.append(sorted(n))
    assert mixed and len(counts) == 34  # every sample of the (single) window, once
    # the packs are the two-pointer packs of the window (as multisets of counts: equal counts are interchangeable)
    assert sorted(packs) == sorted(sorted(counts[i] for i in row) for row in pack_two_pointer(counts, 120)[0])


def test_t2i_training_from_text_shards_with_packing(compose_cfg, tmp_path, text_image_shards):
    """``stages.t2i.datamodule.pack_budget``: train.py trains on packed text-shard batches (a step holds as many
    samples as fit the budget)."""
    from grn.entrypoints.train import train_stage

    tok_ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt", config="tiny_joint")
    cfg = compose_cfg("train", [
        "task=t2i", "model/generator=t2iv_tiny", "model/tokenizer=tiny_joint", "model/text_encoder=tiny",
        "model.generator.attention=fsa", "trainer=cpu", "logger=csv", "callbacks=none",
        f"stages.t2i.tokenizer_ckpt={tok_ckpt}", "stages.t2i.max_steps=3", "stages.t2i.datamodule.pack_budget=400",
        "stages.t2i.datamodule.pack_window=16", "stages.t2i.lit_module.loss_weight_power=0.5",
        "data=text_image", f"data.train_shards='{text_image_shards}'", "data.pn=4", "data.stride=8",
        "data.batch_size=4", "data.num_workers=0", "data.epoch_samples=64", "data.shuffle_buffer=4",
        "data.pin_memory=false", "trainer.log_every_n_steps=1", f"paths.run_dir={tmp_path / 'run'}"])
    last = train_stage(cfg, "t2i")
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3
    samples = logged_values(tmp_path / "run", "train/samples")
    losses = logged_values(tmp_path / "run", "train/loss")
    assert len(losses) == 3 and all(np.isfinite(losses)) and min(samples) > 4  # more than a batch_size each


def test_video_cache_carries_each_lines_first_frame_condition(tmp_path):
    """A video line with ``first_frame_condition: true`` (official §B1) reaches the trainer as the batch's
    ``first_frame_condition`` flag, with its caption prefixed ``<I2V>`` (``<T2V>`` for the others), so the
    training module conditions exactly those clips."""
    out = tmp_path / "shards"
    clips, labels, _, captions = moving_digits("train", frames=5, image_size=32, digit_size=16)
    samples = []
    for i in range(6):
        frames = ((clips[i].permute(1, 2, 3, 0).numpy() + 1) * 127.5).astype(np.uint8)
        meta = {"tarsier2_caption": captions[i], "fps": 8, "height": 32, "width": 32, "begin_frame_id": 0,
                "end_frame_id": 5, **({"first_frame_condition": True} if i % 3 == 0 else {})}
        samples.append({"__key__": f"v{i:03d}", "mp4": encode_mp4(frames, 8), "json": json.dumps(meta)})
    write_shards(samples, out, max_count=3)
    tok_ckpt = tiny_tokenizer_ckpt(tmp_path / "tok.ckpt", config="tiny_joint")
    source = TextVideoDataModule(train_shards=str(out / "shard-{000000..000001}.tar"), num_frames=5, fps=8, pn=4,
                                 stride=8, batch_size=3, resampled=False, shuffle_buffer=0, prompt_prefix=True)
    cache = ensure_text_token_cache(source, tok_ckpt, TEXT, tmp_path / "cache")
    dm = TextTokenShardDataModule(str(cache), batch_size=3, resampled=False, shuffle_buffer=0)
    seen = {}
    for b in dm.train_dataloader():
        assert b["first_frame_condition"].dtype == torch.bool
        for key, flag, caption in zip(b["key"], b["first_frame_condition"].tolist(), b["caption"]):
            seen[key] = flag
            assert caption.startswith("<I2V>" if flag else "<T2V>")
    assert seen == {f"v{i:03d}": i % 3 == 0 for i in range(6)}
