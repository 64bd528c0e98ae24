"""Hydra configs of the tiny networks the tests build (the class-conditional GRN, the T2I/T2V net and its text
encoder, the GAN tokenizer and its discriminator) and their stand-in data (importable: tests/conftest.py puts this
folder on sys.path)."""

from __future__ import annotations

from typing import Any


def tiny_generator_config(latent_dim: int, hbq_rounds: int, num_classes: int, input_size: int,
                          **extra: Any) -> dict[str, Any]:
    """``grn.models.generator.build_generator`` at size ``tiny`` for ``[B, latent_dim, input_size, input_size]``
    token maps; ``extra`` adds keys such as ``target``."""
    return {"_target_": "grn.models.generator.build_generator", "size": "tiny", "latent_dim": latent_dim,
            "hbq_rounds": hbq_rounds, "num_classes": num_classes, "input_size": input_size, **extra}


# a 2-stage HBQ tokenizer (stride 2) and a 2-layer PatchGAN: a GAN step takes milliseconds
TINY_TOKENIZER = {
    "_target_": "grn.models.tokenizer.HBQTokenizer",
    "latent_dim": 4,
    "hbq_rounds": 4,
    "enc_channels": 8,
    "dec_channels": 8,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
}
# Hydra overrides that shrink experiment=tokenizer_tiny_joint to a toy (16² crops and clips, 8-channel
# tokenizer, 2×2 validation grid): a training step takes well under a second
TOY_TINY_JOINT = [
    "data.photos.crop_size=16",
    "data.photos.batch_size=2",
    "data.photos.val_grid=2",
    "data.gif.crop_size=16",
    "data.gif.batch_size=1",
    "model.tokenizer.enc_channels=8",
    "model.tokenizer.dec_channels=8",
]
TINY_DISCRIMINATOR = {
    "_target_": "grn.models.discriminator.PatchDiscriminator",
    "base_channels": 8,
    "num_layers": 2,
}


def smooth_images(n: int, size: int = 16, seed: int = 0):
    """Low-frequency colour images in [-1, 1], ``[n, 3, size, size]`` (learnable in a few steps)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def input_dependent_init(net):
    """Re-initialise ``net`` in place so that its logits follow its input map closely (for parity tests, where a
    network that ignores its input could not tell which map it was fed): unit norm weights, fan-in-scaled matrices
    with gain 2 (0.3 on adaLN modulations, so that class and t do not drown the tokens), small vectors. Returns
    ``net`` in eval mode. Draws from the global RNG: seed it first."""
    import math

    import torch

    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif p.dim() >= 2:
                p.normal_(0, (0.3 if "adaLN" in name else 2.0) / math.sqrt(p[0].numel()))
            else:
                p.normal_(0, 0.02)
    return net.eval()


def random_captions(*lens: int, dim: int, seed: int = 0):
    """Stand-in caption features: one ``[L, dim]`` float tensor per length, from a seeded generator."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g) for n in lens]


def tiny_t2iv_config(latent_dim: int, hbq_rounds: int, text_dim: int = 16, **extra: Any) -> dict[str, Any]:
    """``grn.models.t2iv.build_t2iv`` at size ``tiny`` (bit target) for captions of width ``text_dim``."""
    return {"_target_": "grn.models.t2iv.build_t2iv", "size": "tiny", "latent_dim": latent_dim,
            "hbq_rounds": hbq_rounds, "target": "bits", "text_dim": text_dim, **extra}


def tiny_text_encoder_config(dim: int = 16) -> dict[str, Any]:
    """``grn.models.text_encoder.tiny_text_encoder`` with one layer of two heads."""
    return {"_target_": "grn.models.text_encoder.tiny_text_encoder", "dim": dim, "num_layers": 1, "num_heads": 2}


def quiet_cpu_trainer(steps: int, **kwargs: Any):
    """A one-CPU Lightning Trainer for ``steps`` steps without logger, checkpoints, progress bar, model summary
    or sanity validation; ``kwargs`` add or replace Trainer options."""
    import lightning as L

    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(max_steps=steps, **{**options, **kwargs})


def tiny_tokenizer_ckpt(path, seed: int = 0, config: str = "tiny"):
    """A tiny random tokenizer (``conf/model/tokenizer/<config>.yaml``) saved in the TokenizerLitModule checkpoint
    layout (hyper_parameters + weights)."""
    from pathlib import Path

    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from grn.entrypoints.common import CONF_DIR
    from grn.models.ema import EMA

    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "tokenizer" / f"{config}.yaml"))
    torch.manual_seed(seed)
    tok = instantiate(cfg)
    state = {f"tokenizer.{k}": v for k, v in tok.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in EMA(tok, 0.0).state_dict().items()})
    torch.save({"hyper_parameters": {"tokenizer": cfg}, "state_dict": state}, path)
    return path


def save_tiny_joint_tokenizer(path) -> dict[str, Any]:
    """Write an untrained ``conf/model/tokenizer/tiny_joint.yaml`` tokenizer (drawn after ``torch.manual_seed(0)``,
    its EMA equal to the weights) to ``path`` in the tokenizer training module's checkpoint layout; returns the
    tokenizer config."""
    from pathlib import Path

    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from grn.entrypoints.common import CONF_DIR
    from grn.models.ema import EMA

    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "tokenizer" / "tiny_joint.yaml"))
    torch.manual_seed(0)
    tok = instantiate(cfg)
    state = {f"tokenizer.{k}": v for k, v in tok.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in EMA(tok, 0.0).state_dict().items()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": {"tokenizer": cfg}, "state_dict": state}, path)
    return cfg
