"""scripts/cache_tokens.py: encodes once into token shards keyed by the tokenizer's hash and the transform; the
generator then trains on them without the tokenizer."""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from grn.datamodules.builtin import load_digits_split
from grn.datamodules.images import ImageShardDataModule
from grn.datamodules.token_shards import TokenShardDataModule
from grn.datamodules.writers import write_shards
from grn.entrypoints.common import CONF_DIR
from grn.models.ema import EMA

from script_loader import load_script
from tiny_nets import tiny_generator_config



def _script():
    return load_script("cache_tokens")


def _tokenizer_ckpt(path: Path, seed: int = 0) -> Path:
    """A tiny tokenizer saved in the TokenizerLitModule checkpoint layout (hyper_parameters + tokenizer/ema)."""
    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "tokenizer" / "tiny.yaml"))
    torch.manual_seed(seed)
    tok = instantiate(cfg)
    ema = EMA(tok, 0.0)
    state = {f"tokenizer.{k}": v for k, v in tok.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    torch.save({"hyper_parameters": {"tokenizer": cfg}, "state_dict": state}, path)
    return path


def _digit_shards(out: Path, n: int = 24) -> str:
    x, y = load_digits_split("val", image_size=32)
    pixels = ((x[:n].permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()

    def samples():
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(pixels[i]).save(buf, format="PNG")
            yield {"__key__": f"{i:06d}", "png": buf.getvalue(), "cls": int(y[i])}

    write_shards(samples(), out, max_count=8)
    return str(out / "shard-{000000..000002}.tar")


@pytest.fixture
def cached(tmp_path):
    ckpt = _tokenizer_ckpt(tmp_path / "tok.ckpt")
    shards = _digit_shards(tmp_path / "pixels")
    args = ["--tokenizer", str(ckpt), "--shards", shards, "--image-size", "32", "--num-classes", "10",
            "--cache-root", str(tmp_path / "cache"), "--batch-size", "8", "--device", "cpu", "--max-count", "10"]
    return _script().main(args), args, ckpt, shards


def test_cache_tokens_encodes_once_and_matches_the_tokenizer(cached, tmp_path):
    result, args, ckpt, shards = cached
    cache = Path(result["cache"])
    assert not result["cached"] and result["splits"]["train"]["num_samples"] == 24
    assert cache.parent == tmp_path / "cache" / "tokens" and (cache / "meta.json").is_file()
    # a second run finds the finished cache and encodes nothing
    again = _script().main(args)
    assert again["cached"] and again["cache"] == result["cache"]
    # another tokenizer checkpoint -> another cache folder
    other = _tokenizer_ckpt(tmp_path / "tok2.ckpt", seed=1)
    args2 = list(args)
    args2[1] = str(other)
    assert _script().main(args2)["cache"] != result["cache"]

    # the cached tokens are the tokenizer's own encoding of the same (unflipped) pixels
    from grn.checkpoints import load_tokenizer

    tokenizer = load_tokenizer(ckpt)
    pixels = ImageShardDataModule(train_shards=shards, image_size=32, num_classes=10, flip=False, batch_size=24,
                                  resampled=False, shuffle_buffer=0, drop_last=False)
    batch = pixels.record(next(iter(pixels.train_dataloader())))
    with torch.no_grad():
        expected = dict(zip(batch["key"], tokenizer.encode(batch["image"], target="index")))
    dm = TokenShardDataModule(cache=str(cache), flip=False, batch_size=6, resampled=False, shuffle_buffer=0)
    got = {k: t for b in dm.train_dataloader() for k, t in zip(dm.record(b)["key"], b["tokens"])}
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)


def test_generator_trains_on_the_token_cache_without_the_tokenizer(cached, tmp_path, monkeypatch):
    from grn import checkpoints
    from grn.lit_modules.generator import GeneratorLitModule

    result = cached[0]

    def no_tokenizer(*a, **k):
        raise AssertionError("training must not load the tokenizer")

    monkeypatch.setattr(checkpoints, "load_tokenizer", no_tokenizer)
    dm = TokenShardDataModule(cache=result["cache"], batch_size=4, resampled=True, epoch_samples=16,
                              shuffle_buffer=8, seed=0)
    net = tiny_generator_config(dm.latent_dim, dm.hbq_rounds, dm.num_classes, 8, target="index")
    module = GeneratorLitModule(net=net, lr=1e-3, ema_decays=[0.9])
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3 and dm.state_dict()["consumed"] == 3
    assert np.isfinite(float(trainer.callback_metrics["train/loss"]))
