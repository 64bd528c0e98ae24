"""``python -m grn.studio ckpt=<generator.ckpt> [tokenizer_ckpt=...] [port=7860]`` (also ``grn studio ...``):
load the checkpoint through :meth:`grn.pipeline.GRNPipeline.from_pretrained` and serve the studio page on
localhost (:mod:`grn.studio`, docs/studio.md). A bad key or checkpoint stops it with one ``error:`` line, exit
code 2."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import hydra
from omegaconf import DictConfig

from grn.entrypoints.common import CONF_DIR
from grn.entrypoints.errors import ConfigError, cli_errors
from grn.entrypoints.validate import _missing, check_checkpoint, choice, number

log = logging.getLogger("grn.studio")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (for ``port=0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def validate_studio(cfg: DictConfig) -> None:
    if _missing(cfg, "ckpt"):
        raise ConfigError(
            "ckpt is not set: give ckpt=<a generator .ckpt written by train.py>, e.g. "
            "ckpt=runs/quickstart/c2i/checkpoints/last.ckpt (make studio trains one)"
        )
    if not Path(str(cfg.ckpt)).is_dir():  # a folder is the loader's to judge
        check_checkpoint("ckpt", cfg.ckpt, "generator")
    if not _missing(cfg, "tokenizer_ckpt"):
        check_checkpoint("tokenizer_ckpt", cfg.tokenizer_ckpt, "tokenizer")
    number("port", cfg.get("port"), integer=True, ge=0, le=65535)
    for key in ("height", "width", "frames"):
        number(key, cfg.get(key), integer=True, ge=1)
    choice("inbrowser", cfg.get("inbrowser"), (True, False))


def run(cfg: DictConfig, block: bool = True):
    """Load, build and serve; ``block=False`` returns ``(demo, url)`` once the page is up (tests)."""
    validate_studio(cfg)
    from grn.studio.engine import Studio

    studio = Studio.load(
        cfg.ckpt,
        cfg.tokenizer_ckpt,
        cfg.ema,
        str(cfg.device),
        height=int(cfg.height),
        width=int(cfg.width),
        frames=int(cfg.frames),
    )
    from grn.studio.app import launch

    port = int(cfg.port) or free_port(str(cfg.host))
    log.info("GRN studio on %s (%s model) at http://%s:%d", cfg.ckpt, studio.kind, cfg.host, port)
    return launch(studio, str(cfg.host), port, bool(cfg.inbrowser), block=block, workdir=cfg.get("workdir"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="studio")
@cli_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
