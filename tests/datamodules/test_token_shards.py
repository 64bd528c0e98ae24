"""Token caches: bit packing round trip, the cache's contents, and generator batches read from it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from grn.datamodules.bad_samples import BadSample
from grn.datamodules.builtin import load_digits_split
from grn.datamodules.token_shards import (
    TokenShardDataModule,
    iter_tensor_batches,
    pack_tokens,
    read_meta,
    unpack_tokens,
    write_token_cache,
)
from grn.entrypoints.common import CONF_DIR


@pytest.mark.parametrize("shape", [(4, 8, 8), (16, 3, 4, 5)])
@pytest.mark.parametrize("hbq_rounds", [1, 4, 6])
def test_pack_unpack_round_trip(shape, hbq_rounds):
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, 2**hbq_rounds, shape, generator=g)
    data = pack_tokens(index, hbq_rounds)
    assert torch.equal(unpack_tokens(data), index)
    # packed: M bits per symbol plus a 6 + 4·ndim byte header
    assert len(data) == -(-index.numel() * hbq_rounds // 8) + 6 + 4 * len(shape)


def test_pack_rejects_out_of_range_and_unpack_flags_garbage():
    with pytest.raises(ValueError):
        pack_tokens(torch.tensor([[[16]]]), 4)
    with pytest.raises(BadSample) as err:
        unpack_tokens(b"garbage")
    assert err.value.reason == "wrong_type"


def tiny_tokenizer():
    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "tokenizer" / "tiny.yaml"))
    torch.manual_seed(0)
    return instantiate(cfg).eval(), cfg


def test_cache_holds_exact_tokens_and_the_datamodule_serves_them(tmp_path):
    tokenizer, _ = tiny_tokenizer()
    images, labels = load_digits_split("val", image_size=32)
    images, labels = images[:20], labels[:20]
    meta = write_token_cache(tokenizer, {"train": iter_tensor_batches(images, labels, 10)}, tmp_path,
                             hbq_rounds=4, meta={"num_classes": 10}, max_count=8)
    assert meta["splits"]["train"] == {"shards": ["train-000000.tar", "train-000001.tar", "train-000002.tar"],
                                       "num_samples": 20}
    assert read_meta(tmp_path)["token_shape"] == [4, 8, 8]
    with torch.no_grad():
        expected = tokenizer.encode(images, target="index")
        expected_flip = tokenizer.encode(images.flip(-1), target="index")

    dm = TokenShardDataModule(cache=str(tmp_path), batch_size=8, resampled=False, shuffle_buffer=0, drop_last=False,
                              flip=True, seed=0)
    assert (dm.num_classes, dm.latent_dim, dm.hbq_rounds) == (10, 4, 4)
    seen = 0
    flipped = 0
    for batch in dm.train_dataloader():
        batch = dm.record(batch)
        assert batch["tokens"].dtype == torch.int64 and batch["tokens"].shape[1:] == (4, 8, 8)
        for key, tokens, label in zip(batch["key"], batch["tokens"], batch["label"]):
            i = int(key)
            assert label == labels[i]
            same, same_flip = torch.equal(tokens, expected[i]), torch.equal(tokens, expected_flip[i])
            assert same or same_flip
            flipped += same_flip and not same
            seen += 1
    assert seen == 20 and 2 < flipped < 18  # both flips are served, chosen per sample


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cache_tokens.py"):
        TokenShardDataModule(cache=str(tmp_path), batch_size=2, resampled=False)


def test_token_decoder_checks_shape(tmp_path):
    from grn.datamodules.token_shards import TokenDecoder

    decoder = TokenDecoder(flip=False, num_classes=10, token_shape=[4, 8, 8])
    sample = {"__key__": "x", "tok": pack_tokens(torch.zeros(4, 4, 4, dtype=torch.int64), 4), "cls": b"3"}
    with pytest.raises(BadSample, match="shape"):
        decoder(sample, random.Random(0))


def test_file_sha256_is_remembered_but_follows_a_rewrite(tmp_path):
    import hashlib
    import os

    from grn.datamodules.token_shards import file_sha256

    path = tmp_path / "ckpt.bin"
    path.write_bytes(b"a" * 100)
    assert file_sha256(path) == hashlib.sha256(b"a" * 100).hexdigest()
    first = os.stat(path).st_mtime_ns
    path.write_bytes(b"b" * 100)  # same size: only the modification time tells the files apart
    os.utime(path, ns=(first + 1_000_000, first + 1_000_000))
    assert file_sha256(path) == hashlib.sha256(b"b" * 100).hexdigest()
