"""parallelize / EMA.shard_like on a 1-rank gloo group in this process: blocks get their own FSDP groups,
the sharded network computes what the plain one does, and the EMA follows the shards."""

import copy

import pytest
import torch
import torch.distributed as dist
from hydra.utils import instantiate

from grn.distributed.fsdp import default_blocks, is_sharded, parallelize, reshard
from grn.models.ema import EMA

from tiny_nets import tiny_generator_config

NET = tiny_generator_config(2, 2, 3, 4)


@pytest.fixture
def mesh(tmp_path):
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_sharded_network_matches_plain_and_ema_follows(mesh):
    from torch.distributed.fsdp import FSDPModule

    torch.manual_seed(0)
    net = instantiate(NET)
    plain = copy.deepcopy(net)
    blocks = default_blocks(net)
    assert blocks == list(net.blocks)  # the transformer blocks, not their inner layers
    ema = EMA(net, 0.5)
    parallelize(net, mesh, activation_checkpointing=True)
    ema.shard_like(net)
    assert is_sharded(net) and all(isinstance(b, FSDPModule) for b in blocks)

    z = torch.randint(0, 4, (2, 2, 4, 4))
    t, y = torch.rand(2), torch.tensor([0, 2])
    torch.testing.assert_close(net(z, t, y), plain(z, t, y))
    net(z, t, y).float().pow(2).mean().backward()  # a full forward/backward cycle through the groups
    with torch.no_grad():
        for p in reshard(net).parameters():
            p.add_(1.0)
    ema.update(net)  # decay 0.5: shadow = (w + (w + 1)) / 2 = w + 0.5, computed shard by shard
    ema.copy_to(net)
    for (n, p), (_, q) in zip(net.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(p.full_tensor(), q + 0.5, msg=n)
