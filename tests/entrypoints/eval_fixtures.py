"""Tiny untrained checkpoints in the training layout, so eval tests need no training run."""

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from grn.entrypoints.common import CONF_DIR
from grn.checkpoints.values import plain_config
from grn.models.ema import EMA


def make_checkpoints(folder: Path) -> tuple[Path, Path]:
    """``(generator.ckpt, tokenizer.ckpt)`` under ``folder/{c2i,tokenizer}/checkpoints/`` (tiny configs, seed 0)."""
    from grn.lit_modules.generator import GeneratorLitModule

    GlobalHydra.instance().clear()
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train")
    GlobalHydra.instance().clear()
    torch.manual_seed(0)
    tok = instantiate(cfg.model.tokenizer)
    tok_path = folder / "tokenizer" / "checkpoints" / "last.ckpt"
    tok_path.parent.mkdir(parents=True)
    state = {f"tokenizer.{k}": v for k, v in tok.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in EMA(tok, 0.0).state_dict().items()})
    torch.save(
        {"hyper_parameters": {"tokenizer": plain_config(cfg.model.tokenizer)}, "state_dict": state}, tok_path
    )
    gen = GeneratorLitModule(net=cfg.model.generator, tokenizer_ckpt=str(tok_path), ema_decays=[0.999])
    gen_path = folder / "c2i" / "checkpoints" / "last.ckpt"
    gen_path.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": dict(gen.hparams), "state_dict": gen.state_dict()}, gen_path)
    return gen_path, tok_path
