"""One rank of the distributed FID test: ``python fid_worker.py RANK WORLD INIT WEIGHTS REF OUT``.

Each rank extracts features for its interleaved share of a fixed image set and all-reduces the statistics; rank 0
writes the metrics as JSON. It imports only torch, numpy, torch-fidelity and grn.metrics.fid, so a process starts in
seconds. The extractor is a tiny fixed-seed conv net registered with torch-fidelity (``test-tiny``), read from a
weights file like the real Inception network.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from grn.metrics.fid import FidIsAccumulator, build_feature_extractor, load_reference_stats

NAME = "test-tiny"


def tiny_net() -> nn.Sequential:
    """``[B, 3, H, W]`` → ``[B, 32]``."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())


class TinyExtractor(FeatureExtractorBase):
    """``uint8 [B, 3, H, W]`` → ``"32"`` features ``[B, 32]`` and ``"logits"`` ``[B, 5]``."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.body, self.head = tiny_net(), nn.Linear(32, 5)
        self.load_state_dict(torch.load(feature_extractor_weights_path, weights_only=True))

    def forward(self, x):
        f = self.body(x.float() / 127.5 - 1)
        out = {"32": f, "logits": self.head(f)}
        return tuple(out[n] for n in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "32", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "32", "isc": "logits"}[metric]

    @staticmethod
    def can_be_compiled():
        return False


if NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(NAME, TinyExtractor)


def write_weights(path: str) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(
            {
                **{f"body.{k}": v for k, v in tiny_net().state_dict().items()},
                **{f"head.{k}": v for k, v in nn.Linear(32, 5).state_dict().items()},
            },
            path,
        )


def images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """``uint8 [n, 3, 16, 16]``: smooth random blobs (a fixed function of the seed), brightened by ``shift``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=16, mode="bilinear", align_corners=False) + shift
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def score(rank: int, world: int, weights: str, ref: str) -> dict:
    fake = images(90, seed=1, shift=0.15)
    acc = FidIsAccumulator(build_feature_extractor(NAME, weights), isc_splits=3, batch_size=16)
    index = torch.arange(len(fake))
    for sl in index[rank::world].split(20):  # this rank's interleaved share, in uneven batches
        acc.update(fake[sl], sl)
    return acc.compute(load_reference_stats(ref))


if __name__ == "__main__":
    torch.set_num_threads(1)
    rank, world, init, weights, ref, out = sys.argv[1:]
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=int(rank), world_size=int(world))
    result = score(int(rank), int(world), weights, ref)
    if int(rank) == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()
