"""PatchGAN discriminator (the pix2pix N-layer design) for tokenizer training."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PatchDiscriminator"]


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class PatchDiscriminator(nn.Module):
    """Fully convolutional real/fake classifier scoring overlapping patches.

    ``[B, C, H, W]`` → logits ``[B, 1, h, w]``. With ``num_layers`` = n there are n stride-2 4×4 convs (the
    first without norm), then two stride-1 4×4 convs, so ``h = H / 2^n - 2`` (H ≥ 2^n · 3 for a non-empty map;
    n = 3 on 256² gives 30×30 patches of 70×70 pixels).

    Batch norm is replaced by GroupNorm (``norm="group"``) or nothing (``norm="none"``): batch statistics
    would make the logits depend on the rest of the batch, break at batch 1 and differ per rank under DDP.
    """

    def __init__(
        self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3, norm: str = "group"
    ):
        super().__init__()
        if norm not in ("group", "none"):
            raise ValueError(f"norm must be 'group' or 'none', got {norm!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        use_norm = norm == "group"

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=stride, padding=1, bias=not use_norm)]
            if use_norm:
                layers.append(_group_norm(c_out))
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
        self.min_size = 2**num_layers * 3
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # pix2pix initialisation: N(0, 0.02) convs, N(1, 0.02) norm scales
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
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
