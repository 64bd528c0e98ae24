"""LPIPS perceptual distance (the ``lpips`` package; VGG16 trunk by default, AlexNet as in the LPIPS paper),
loaded strictly offline.

The LPIPS linear heads ship inside the ``lpips`` package. The trunk is the torchvision ImageNet checkpoint, read
from a path or the torch hub cache — never downloaded. A random-trunk stand-in exists for tests and demos.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "LPIPS",
    "BACKBONE_FILES",
    "VGG16_FILENAME",
    "build_lpips",
    "default_backbone_path",
    "default_vgg_weights_path",
]

log = logging.getLogger(__name__)

VGG16_FILENAME = "vgg16-397923af.pth"
# torchvision ImageNet checkpoints of the trunks LPIPS supports (the heads ship inside the lpips package)
BACKBONE_FILES = {"vgg": VGG16_FILENAME, "alex": "alexnet-owt-7be5be79.pth"}
STAND_IN_SEED = 0
_warned_stand_in = False


@functools.cache
def _stand_in_net(net: str) -> nn.Module:
    """The random-trunk stand-in, built once per process: it is a fixed function of ``STAND_IN_SEED``, and
    building it (torchvision's whole VGG16 with its 100M-parameter classifier) costs seconds every time."""
    # always real CPU tensors, even when first asked for under a meta-device context (a cached meta module
    # would poison every later copy)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):  # same stand-in every time, global RNG untouched
        torch.manual_seed(STAND_IN_SEED)
        return _make_lpips_net(net)


def default_backbone_path(net: str = "vgg") -> Path:
    """``<torch hub dir>/checkpoints/<torchvision file>``: ``$TORCH_HOME/hub/...``, torchvision's cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def default_vgg_weights_path() -> Path:
    return default_backbone_path("vgg")


def _make_lpips_net(net_name: str = "vgg"):
    import lpips

    with warnings.catch_warnings():
        # lpips builds the trunk through torchvision's deprecated `pretrained=` argument; with
        # pnet_rand=True it means "no weights", which is what we want (we load the trunk ourselves)
        warnings.simplefilter("ignore", UserWarning)
        # pretrained=True: the linear heads come from the package's own weights/v0.1/<net>.pth (no download)
        net = lpips.LPIPS(net=net_name, pretrained=True, pnet_rand=True, verbose=False, eval_mode=False)
    # The heads' dropout is the only train/eval-dependent layer. Swapping it for an identity (same indices, so
    # the state-dict keys are unchanged) makes the metric the same in either mode: a parent's .train() cannot
    # change it, and the module need not be pinned to eval mode (which Lightning warns about).
    for lin in net.lins:
        for i, layer in enumerate(lin.model):
            if isinstance(layer, nn.Dropout):
                lin.model[i] = nn.Identity()
    return net


def _load_trunk(net: nn.Module, path: Path, net_name: str = "vgg") -> None:
    """Copy torchvision ``features.{i}.*`` weights (VGG16 or AlexNet) into lpips' ``slice{k}.{i}.*`` trunk."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapped = {}
    for key in net.state_dict():
        _, index, param = key.split(".")  # slice<k>.<torchvision features index>.<weight|bias>
        src = f"features.{index}.{param}"
        if src not in state:
            kind = {"vgg": "VGG16", "alex": "AlexNet"}[net_name]
            raise ValueError(f"{path} is not a torchvision {kind} state dict (no '{src}')")
        mapped[key] = state[src]
    net.load_state_dict(mapped, strict=True)


class LPIPS(nn.Module):
    """Frozen LPIPS distance. ``forward(x, y)``: images ``[B, 3, H, W]`` → ``[B]``, videos
    ``[B, 3, T, H, W]`` → ``[B, T]`` (time folded into the batch), inputs in [-1, 1]. No layer depends on
    train/eval mode; no parameter requires grad, but gradients flow to the inputs.
    """

    def __init__(self, net: nn.Module, stand_in: bool):
        super().__init__()
        self.net = net
        self.stand_in = stand_in
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.dim() == 5:
            b, c, t, h, w = x.shape
            fold = lambda v: v.transpose(1, 2).reshape(b * t, c, h, w)  # noqa: E731
            return self.net(fold(x), fold(y)).reshape(b, t)
        if x.dim() != 4:
            raise ValueError(f"LPIPS takes [B, 3, H, W] or [B, 3, T, H, W], got shape {tuple(x.shape)}")
        return self.net(x, y).reshape(x.shape[0])


def build_lpips(
    backbone_weights: str | os.PathLike | None = None, allow_random_backbone: bool = False, net: str = "vgg"
) -> LPIPS:
    """Frozen LPIPS module (see :class:`LPIPS`).

    Args:
        backbone_weights: torchvision ImageNet weights of the trunk (``vgg16-397923af.pth`` for ``vgg``,
            ``alexnet-owt-7be5be79.pth`` for ``alex``); default: the torch hub cache, :func:`default_backbone_path`.
        allow_random_backbone: tests/demos only — a trunk with random weights (fixed seed) and the real
            LPIPS heads. It is not a perceptual metric; a warning says so.
        net: ``vgg`` (the VQGAN/GRN choice) or ``alex`` (the LPIPS paper's default; ~20x cheaper).
    Raises:
        FileNotFoundError: the trunk weights are missing (and ``allow_random_backbone`` is false).
    """
    global _warned_stand_in
    if net not in BACKBONE_FILES:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {sorted(BACKBONE_FILES)}")
    if allow_random_backbone:
        lp = copy.deepcopy(_stand_in_net(net))  # a private copy: callers may move or cast theirs
        if not _warned_stand_in:
            log.warning(
                f"LPIPS uses a RANDOM {dict(vgg='VGG16', alex='AlexNet')[net]} backbone (allow_random_backbone=true): a stand-in for "
                "tests/demos, not a real perceptual metric"
            )
            _warned_stand_in = True
        return LPIPS(lp, stand_in=True)

    path = Path(backbone_weights) if backbone_weights is not None else default_backbone_path(net)
    if not path.is_file():
        url = f"https://download.pytorch.org/models/{BACKBONE_FILES[net]}"
        raise FileNotFoundError(
            f"LPIPS ({net}) needs the torchvision ImageNet weights {path.name} at {path}: download {url} "
            f"there (or set backbone_weights=<path>); allow_random_backbone=true exists for tests/demos only"
        )
    lp = _make_lpips_net(net)
    _load_trunk(lp.net, path, net)
    return LPIPS(lp, stand_in=False)
