"""A global batch in config, micro-batch and accumulation derived from the world size (DESIGN §3): the split, the
world size a trainer config launches, and what train.py hands the datamodule and the Trainer."""

import pytest

from grn.distributed.global_batch import split_global_batch, world_size
from grn.entrypoints.errors import ConfigError
from grn.entrypoints.train import stage_batching


@pytest.mark.parametrize("world, max_micro, expected", [
    (1, 128, (128, 8)), (2, 128, (128, 4)), (8, 128, (128, 1)),
    (1, 1024, (1024, 1)), (8, 48, (32, 4)), (2, 100, (64, 8)),
])
def test_split_keeps_the_global_batch_with_the_fewest_accumulation_steps(world, max_micro, expected):
    micro, accumulation = split_global_batch(1024, world, max_micro)
    assert (micro, accumulation) == expected
    assert world * micro * accumulation == 1024 and micro <= max_micro
    # fewest steps: one step fewer would not fit in memory or would not divide exactly
    fewer = accumulation - 1
    assert fewer == 0 or (1024 // world) % fewer or (1024 // world) // fewer > max_micro


def test_split_errors_name_the_problem():
    with pytest.raises(ValueError, match="global batch 1020 does not split over 8 ranks"):
        split_global_batch(1020, 8, 128)
    with pytest.raises(ValueError, match="world size must be a positive integer"):
        split_global_batch(1024, 0, 128)


def test_world_size_of_trainer_configs():
    assert world_size({"devices": 2, "num_nodes": 4}) == 8
    assert world_size({"devices": [0, 1, 2]}) == 3
    assert world_size({"devices": "auto", "accelerator": "cpu"}, cuda_devices=8) == 1
    assert world_size({"devices": "auto", "accelerator": "gpu", "num_nodes": 2}, cuda_devices=8) == 16
    assert world_size({"devices": "4"}) == 4


@pytest.mark.parametrize("devices, nodes, expected", [(1, 1, (128, 8)), (2, 1, (128, 4)), (8, 1, (128, 1)),
                                                      (4, 2, (128, 1))])
def test_the_imagenet_recipe_trains_global_batch_1024_on_any_world_size(compose_cfg, devices, nodes, expected):
    cfg = compose_cfg("train", ["experiment=c2i_grn_b_in256", f"trainer.devices={devices}",
                                f"trainer.num_nodes={nodes}"])
    batching = stage_batching(cfg, "c2i")
    assert (batching["batch_size"], batching["accumulate_grad_batches"]) == expected
    assert devices * nodes * expected[0] * expected[1] == cfg.stages.c2i.global_batch_size == 1024


def test_no_global_batch_keeps_the_per_device_batch_and_accumulation_clash_is_an_error(compose_cfg):
    assert stage_batching(compose_cfg("train", ["experiment=quickstart"]), "c2i") is None
    cfg = compose_cfg("train", ["experiment=c2i_grn_b_in256", "+trainer.accumulate_grad_batches=2"])
    with pytest.raises(ConfigError, match="derives the accumulation; remove trainer.accumulate_grad_batches"):
        stage_batching(cfg, "c2i")
    cfg = compose_cfg("train", ["experiment=c2i_grn_b_in256", "stages.c2i.global_batch_size=1020",
                                "trainer.devices=8"])
    with pytest.raises(ConfigError, match=r"global_batch_size=1020: global batch 1020 does not split over 8"):
        stage_batching(cfg, "c2i")
