"""Every conf/data/*.yaml of the shard pipeline composes, instantiates and yields batches of the contract."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from grn.datamodules.images import ImageShardDataModule
from grn.datamodules.text import TextImageDataModule, TextVideoDataModule
from grn.datamodules.video import VideoShardDataModule


@pytest.mark.parametrize(("name", "key", "shape"), [("digits_shards", "image", (3, 32, 32)),
                                                    ("photos_shards", "image", (3, 64, 64)),
                                                    ("gif_video", "video", (3, 17, 64, 32))])
def test_builtin_shard_configs_give_batches(compose_cfg, name, key, shape):
    cfg = compose_cfg("train", [f"data={name}", "data.batch_size=2", "data.epoch_samples=4"])
    dm = instantiate(cfg.data)
    batch = dm.record(next(iter(dm.train_dataloader())))
    assert batch[key].shape == (2, *shape)
    assert dm.state_dict()["consumed"] == 1


def test_external_shard_configs_instantiate(compose_cfg, digit_shards):
    expected = {"imagenet": ImageShardDataModule, "video": VideoShardDataModule, "text_image": TextImageDataModule,
                "text_video": TextVideoDataModule}
    for name, cls in expected.items():
        cfg = compose_cfg("train", [f"data={name}", f"data.train_shards='{digit_shards}'"])
        dm = instantiate(cfg.data)
        assert type(dm) is cls and dm.resampled and dm.epoch_samples > 0
    cfg = compose_cfg("train", ["data=imagenet", f"data.train_shards='{digit_shards}'", "data.image_size=16",
                                "data.num_workers=0", "data.batch_size=4"])
    batch = instantiate(cfg.data).train_dataloader()
    assert next(iter(batch))["image"].shape == (4, 3, 16, 16)


def test_c2i_stage_caches_tokens_for_a_shard_source(compose_cfg):
    cfg = compose_cfg("train", ["data=digits_shards"])
    assert cfg.stages.c2i.datamodule.cache_dir == cfg.paths.cache_dir
