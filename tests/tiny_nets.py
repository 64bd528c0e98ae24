"""Hydra configs of the tiny class-conditional GRN the tests build (importable: tests/conftest.py puts this folder
on sys.path)."""

from __future__ import annotations

from typing import Any


def tiny_generator_config(latent_dim: int, hbq_rounds: int, num_classes: int, input_size: int,
                          **extra: Any) -> dict[str, Any]:
    """``grn.models.generator.build_generator`` at size ``tiny`` for ``[B, latent_dim, input_size, input_size]``
    token maps; ``extra`` adds keys such as ``target``."""
    return {"_target_": "grn.models.generator.build_generator", "size": "tiny", "latent_dim": latent_dim,
            "hbq_rounds": hbq_rounds, "num_classes": num_classes, "input_size": input_size, **extra}
