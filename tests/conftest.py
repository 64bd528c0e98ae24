"""Shared fixtures: Hydra composition with the real conf/ tree, isolated run and cache directories."""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from grn.entrypoints.common import CONF_DIR

torch.set_num_threads(min(2, os.cpu_count() or 1))
# torch.compile's on-disk cache does not key compiled graphs by ATEN_CPU_CAPABILITY (torch 2.14): a graph cached
# by a default (avx512) run, loaded by an ATEN_CPU_CAPABILITY=avx2 run, crashes (garbage embedding_bag offsets in
# test_compiled_sampling_matches_eager). Runs with the variable set get a cache of their own, in the temp dir.
if os.environ.get("ATEN_CPU_CAPABILITY") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{os.environ['ATEN_CPU_CAPABILITY']}"
    )
sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers (reference_grn, tiny_nets, script_loader)


@pytest.fixture
def compose_cfg(tmp_path, monkeypatch):
    """compose_cfg(config_name, overrides) -> the composed config, with run/cache dirs under tmp_path and the
    Hydra runtime set so that ``${hydra:...}`` interpolations resolve."""
    monkeypatch.setenv("GRN_LOG_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("GRN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GRN_RUN_ID", raising=False)

    def _compose(config_name: str = "train", overrides: list[str] | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose(config_name, overrides=overrides or [], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "runs" / "test-run")
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def digits_classifier_file(tmp_path_factory):
    """A digits classifier trained once per test run (one epoch: the tests that use it check plumbing, not the
    classifier), cached in the format of :func:`grn.metrics.digits.load_or_train_classifier`. Tests copy it where
    their config expects the cache."""
    import grn.metrics.digits as digits

    path = tmp_path_factory.mktemp("digits_classifier") / "digits.pt"
    train = digits.train_digits_classifier
    digits.train_digits_classifier = lambda **kw: train(**{**kw, "epochs": 1})
    try:
        digits.load_or_train_classifier(path)
    finally:
        digits.train_digits_classifier = train
    return path


@pytest.fixture(scope="session")
def full_digits_classifier_file(tmp_path_factory):
    """The default digits classifier (the real 12-epoch recipe), trained once per test run and cached as
    :func:`grn.metrics.digits.load_or_train_classifier` writes it, so a run directory can be given it ready-made."""
    import grn.metrics.digits as digits

    path = tmp_path_factory.mktemp("digits_classifier_full") / "digits_classifier.pt"
    digits.load_or_train_classifier(path)
    return path


@pytest.fixture(scope="session")
def tiny_c2i_checkpoints(tmp_path_factory):
    """``(generator.ckpt, tokenizer.ckpt)``: tiny untrained checkpoints in the training layout (the default tiny
    configs, seed 0: 32x32 images, 8x8x4 tokens, M = 4, 10 classes), written once per test run."""
    sys.path.insert(0, str(Path(__file__).parent / "entrypoints"))
    from eval_fixtures import make_checkpoints

    return make_checkpoints(tmp_path_factory.mktemp("tiny_c2i"))


@pytest.fixture(scope="session")
def tiny_text_checkpoints(tmp_path_factory):
    """``(t2iv.ckpt, tokenizer.ckpt)``: a tiny untrained T2I/T2V checkpoint (GRN_bit, the tiny caption encoder)
    on the tiny joint tokenizer (stride 8 in space, 4 in time), written once per test run."""

    from grn.lit_modules.t2iv import T2IVLitModule
    from tiny_nets import save_tiny_joint_tokenizer, tiny_t2iv_config, tiny_text_encoder_config

    root = tmp_path_factory.mktemp("tiny_text")
    tok_path = root / "tokenizer.ckpt"
    cfg = save_tiny_joint_tokenizer(tok_path)
    module = T2IVLitModule(net=tiny_t2iv_config(cfg["latent_dim"], cfg["hbq_rounds"]),
                           text_encoder=tiny_text_encoder_config(), tokenizer_ckpt=str(tok_path))
    gen_path = root / "t2iv.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, gen_path)
    return gen_path, tok_path
