"""PatchGAN discriminator (the pix2pix N-layer design) for tokenizer training."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PatchDiscriminator", "BatchStatNorm", "NORMS", "uses_batch_statistics", "to_sync_batch_norm"]

NORMS = ("group", "batch", "none")


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class BatchStatNorm(nn.Module):
    """Batch normalisation from the statistics of the batch at hand, in training and in eval alike: the
    official discriminator's ``Normalize(norm_type="batch")`` (``nn.SyncBatchNorm(C,
    track_running_stats=False)``, facts D4). ``[B, C, H, W]`` → same shape.

    The layer sits in ``.norm``, so the keys are the official ``main.<i>.norm.{weight,bias}``; there are no
    buffers. It is a plain ``BatchNorm2d`` (which also runs on the CPU) until :func:`to_sync_batch_norm` turns it
    into a ``SyncBatchNorm`` for multi-GPU DDP.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether ``module`` holds a batch-statistics norm (``norm="batch"``)."""
    return any(isinstance(m, BatchStatNorm) for m in module.modules())


def to_sync_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every batch norm made a ``SyncBatchNorm`` (statistics over all ranks, as the official
    DDP run has them); keys, parameters and ``track_running_stats=False`` stay. SyncBatchNorm needs GPU
    tensors, so callers convert only on GPU ranks."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


class PatchDiscriminator(nn.Module):
    """Fully convolutional real/fake classifier scoring overlapping patches.

    ``[B, C, H, W]`` → logits ``[B, 1, h, w]``. With ``num_layers`` = n there are n stride-2 4×4 convs (the
    first without norm), then two stride-1 4×4 convs, so ``h = H / 2^n - 2`` (H ≥ 2^n · 3 for a non-empty map;
    n = 3 on 256² gives 30×30 patches of 70×70 pixels).

    Norms after the stride-2/1 convs (not the first): ``norm="group"`` (GroupNorm, the default here) or
    ``"none"`` keep each sample's logits independent of the rest of the batch (batch statistics break at batch
    1 and differ per rank unless synced). ``norm="batch"`` is the released recipe's :class:`BatchStatNorm`
    (statistics of the current batch only, real and fake forwarded separately), with the official keys
    ``main.{0,2,3.norm,5,6.norm,8,9.norm,11}`` and the same 2,765,633 parameters at the defaults.
    """

    def __init__(
        self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3, norm: str = "group"
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        use_norm = norm != "none"
        make_norm = _group_norm if norm == "group" else BatchStatNorm

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=stride, padding=1, bias=not use_norm)]
            if use_norm:
                layers.append(make_norm(c_out))
            return layers + [nn.LeakyReLU(0.2, inplace=True)]

        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = base_channels
        for n in range(1, num_layers):
            out = base_channels * min(2**n, 8)
            layers += block(channels, out, 2)
            channels = out
        out = base_channels * min(2**num_layers, 8)
        layers += block(channels, out, 1)
        layers.append(nn.Conv2d(out, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.num_layers = num_layers
        self.norm_type = norm
        self.min_size = 2**num_layers * 3
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # pix2pix initialisation: N(0, 0.02) convs, N(1, 0.02) norm scales
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` (fold video time into the batch first) → patch logits ``[B, 1, h, w]``."""
        if x.dim() != 4:
            raise ValueError(f"PatchDiscriminator takes [B, C, H, W] images, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is too small for a PatchGAN with "
                f"num_layers={self.num_layers}; "
                f"need >= {self.min_size} (lower num_layers)"
            )
        return self.main(x)
