"""Every way a checkpoint is loaded refuses crafted files before anything in them runs: load_generator, load_t2iv,
load_tokenizer (grn.checkpoints and the TokenizerLitModule alias), TextPipeline (text encoder),
GRNPipeline.from_pretrained (c2i, t2i), sample.py, eval.py (c2i, tokenizer and t2i), scripts/cache_tokens.py,
scripts/t2iv_digits_eval.py, train.py task=c2i (the stage's token datamodule) and Lightning's load_from_checkpoint
of the modules. Each payload would create a marker file if it ran; legitimate checkpoints still load. Loading is
memory-mapped and pulls in no Lightning."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning
import pytest
import torch
from hydra.utils import instantiate

from grn.checkpoints import UnsafeCheckpointError, load_generator, load_t2iv, load_tokenizer
from grn.lit_modules.generator import GeneratorLitModule
from grn.lit_modules.t2iv import T2IVLitModule
from grn.lit_modules.tokenizer import TokenizerLitModule
from grn.models.generator import GRN
from grn.models.t2iv import T2IVNet
from grn.pipeline import GRNPipeline
from grn.text_pipeline import TextPipeline

from script_loader import load_script

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "entrypoints"))
from eval_fixtures import make_checkpoints  # noqa: E402
from payloads import PAYLOADS, poison  # noqa: E402


DISCRIMINATOR = {"_target_": "grn.models.discriminator.PatchDiscriminator", "base_channels": 8, "num_layers": 1}


@pytest.fixture(scope="module")
def legit(tmp_path_factory) -> dict[str, Path]:
    """Tiny untrained checkpoints in the training layout: generator, tokenizer and T2I (tiny text encoder)."""
    folder = tmp_path_factory.mktemp("legit")
    gen, tok = make_checkpoints(folder)
    module = T2IVLitModule(
        net={"_target_": "grn.models.t2iv.build_t2iv", "size": "tiny", "latent_dim": 4, "hbq_rounds": 4,
             "target": "bits", "text_dim": 16},
        text_encoder={"_target_": "grn.models.text_encoder.tiny_text_encoder", "dim": 16, "num_layers": 1,
                      "num_heads": 2},
        tokenizer_ckpt=str(tok), ema_decays=[0.999],
    )
    t2i = folder / "t2i.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, t2i)
    # what Lightning's load_from_checkpoint needs to reach the module's __init__
    for path, extra in ((gen, {}), (t2i, {}), (tok, {"discriminator": DISCRIMINATOR, "lpips_weight": 0.0})):
        ckpt = torch.load(path, weights_only=True)
        ckpt["hyper_parameters"].update(extra)
        torch.save({**ckpt, "pytorch-lightning_version": lightning.__version__}, path)
    return {"gen": gen, "tok": tok, "t2i": t2i}


def _sample(ctx, *overrides):
    from grn.entrypoints.sample import run

    return run(ctx["compose"]("sample", [*overrides, f"out={ctx['tmp']}/x.png", "sampler.num_steps=1"]))


def _eval(ctx, *overrides):
    from grn.entrypoints.eval import run

    return run(ctx["compose"]("eval", list(overrides)))


def _train_c2i_tokens(ctx, p):
    """What train.py task=c2i builds first: the stage's datamodule, which encodes the data with its tokenizer."""
    cfg = ctx["compose"]("train", [f"stages.c2i.tokenizer_ckpt={p}"])
    datamodule = instantiate(cfg.stages.c2i.datamodule)
    datamodule.prepare_data()
    datamodule.setup("fit")


def _cache_tokens(ctx, p):
    shards = f"{ctx['tmp']}/shards/shard-{{000000..000001}}.tar"
    load_script("cache_tokens").main(["--tokenizer", str(p), "--shards", shards, "--cache-root", f"{ctx['tmp']}/c"])


# route -> (the legitimate checkpoint poisoned, the config in it that is replaced, how the route is entered)
ROUTES = {
    "load_generator": ("gen", "net", lambda ctx, p: load_generator(p)),
    "load_t2iv": ("t2i", "net", lambda ctx, p: load_t2iv(p)),
    "load_tokenizer": ("tok", "tokenizer", lambda ctx, p: load_tokenizer(p)),
    "lit_module_load_tokenizer": ("tok", "tokenizer", lambda ctx, p: TokenizerLitModule.load_tokenizer(p)),
    "text_pipeline_encoder": ("t2i", "text_encoder", lambda ctx, p: TextPipeline.from_checkpoint(p)),
    "from_pretrained_c2i": ("gen", "net", lambda ctx, p: GRNPipeline.from_pretrained(p)),
    "from_pretrained_c2i_tokenizer": (
        "tok", "tokenizer", lambda ctx, p: GRNPipeline.from_pretrained(ctx["legit"]["gen"], tokenizer_ckpt=p)),
    "from_pretrained_t2i_net": ("t2i", "net", lambda ctx, p: GRNPipeline.from_pretrained(p, task="t2i")),
    "from_pretrained_t2i_encoder": ("t2i", "text_encoder", lambda ctx, p: GRNPipeline.from_pretrained(p)),
    "sample_c2i": ("gen", "net", lambda ctx, p: _sample(ctx, f"ckpt={p}", "classes=[1]")),
    "sample_tokenizer": ("tok", "tokenizer",
                         lambda ctx, p: _sample(ctx, f"ckpt={ctx['legit']['gen']}", f"tokenizer_ckpt={p}")),
    "sample_t2i": ("t2i", "text_encoder", lambda ctx, p: _sample(ctx, f"ckpt={p}", "prompts=[a one]")),
    "eval_c2i": ("gen", "net", lambda ctx, p: _eval(ctx, f"ckpt={p}")),
    "eval_c2i_tokenizer": ("tok", "tokenizer",
                           lambda ctx, p: _eval(ctx, f"ckpt={ctx['legit']['gen']}", f"tokenizer_ckpt={p}")),
    "eval_tokenizer": ("tok", "tokenizer", lambda ctx, p: _eval(ctx, f"ckpt={p}", "task=tokenizer")),
    "eval_t2i": ("t2i", "net", lambda ctx, p: _eval(ctx, f"ckpt={p}", "task=t2i")),
    "eval_t2i_encoder": ("t2i", "text_encoder", lambda ctx, p: _eval(ctx, f"ckpt={p}", "task=t2i")),
    "cache_tokens_script": ("tok", "tokenizer", _cache_tokens),
    "t2iv_digits_eval_script": ("t2i", "text_encoder",
                                lambda ctx, p: load_script("t2iv_digits_eval").load_with_encoder(p)),
    "train_c2i_tokenizer_ckpt": ("tok", "tokenizer", _train_c2i_tokens),
    # Lightning's load_from_checkpoint hands the stored configs to __init__, which instantiates them
    "lightning_generator": ("gen", "net", lambda ctx, p: GeneratorLitModule.load_from_checkpoint(p)),
    "lightning_t2iv_net": ("t2i", "net", lambda ctx, p: T2IVLitModule.load_from_checkpoint(p)),
    "lightning_t2iv_encoder": ("t2i", "text_encoder", lambda ctx, p: T2IVLitModule.load_from_checkpoint(p)),
    "lightning_tokenizer": ("tok", "tokenizer", lambda ctx, p: TokenizerLitModule.load_from_checkpoint(p)),
    "lightning_discriminator": ("tok", "discriminator", lambda ctx, p: TokenizerLitModule.load_from_checkpoint(p)),
}


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_crafted_checkpoints_are_refused_without_running(route, payload, legit, tmp_path, compose_cfg):
    which, key, enter = ROUTES[route]
    marker = tmp_path / "marker"
    path, target = poison(legit[which], key, payload, marker, tmp_path / "crafted.ckpt")
    with pytest.raises(Exception) as err:
        enter({"legit": legit, "tmp": tmp_path, "compose": compose_cfg}, path)
    assert not marker.exists(), "the payload ran"
    assert err.type is UnsafeCheckpointError, err.value
    message = str(err.value)
    assert message.startswith(f"{path}: refused") and "\n" not in message
    assert "only grn's own registered classes are built from checkpoints" in message
    if target is None:  # the whole file is a pickled call: weights_only refuses it
        assert "refused to load: it holds pickled objects" in message and "io.open" in message
    else:
        assert f"hyper_parameters.{key}" in message and repr(target) in message


def test_legitimate_checkpoints_still_load(legit):
    assert isinstance(load_generator(legit["gen"])[0], GRN)
    assert isinstance(load_t2iv(legit["t2i"])[0], T2IVNet)
    assert TokenizerLitModule.load_tokenizer(legit["tok"]).latent_dim == 4
    assert load_tokenizer(legit["tok"]).latent_dim == 4
    assert isinstance(GRNPipeline.from_pretrained(legit["gen"]), GRNPipeline)
    pipe = GRNPipeline.from_pretrained(legit["t2i"])
    assert isinstance(pipe, TextPipeline) and pipe.text_encoder.dim == 16
    net, encode = load_script("t2iv_digits_eval").load_with_encoder(legit["t2i"])
    assert isinstance(net, T2IVNet) and encode(["a one"])[0].shape[-1] == 16
    assert isinstance(GeneratorLitModule.load_from_checkpoint(legit["gen"]).net, GRN)
    assert isinstance(T2IVLitModule.load_from_checkpoint(legit["t2i"]).net, T2IVNet)


def test_the_pure_loader_and_the_lit_module_alias_refuse_alike(legit, tmp_path):
    path, _ = poison(legit["tok"], "tokenizer", "open", tmp_path / "marker", tmp_path / "crafted.ckpt")
    messages = []
    for load in (load_tokenizer, TokenizerLitModule.load_tokenizer):
        with pytest.raises(UnsafeCheckpointError) as err:
            load(path)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and not (tmp_path / "marker").exists()


def test_each_loader_reads_its_file_once_memory_mapped(legit, monkeypatch):
    from grn.checkpoints import load_consolidated

    calls, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real(*a, **k))
    for load, which in ((load_generator, "gen"), (load_t2iv, "t2i"), (load_tokenizer, "tok"),
                        (load_consolidated, "gen")):
        calls.clear()
        load(legit[which])
        assert [(c["mmap"], c["weights_only"]) for c in calls] == [(True, True)], (load.__name__, calls)


def test_loading_imports_no_lightning(legit):
    """grn.checkpoints is pure torch: a datamodule or pipeline that loads a network pulls in no training code."""
    import os
    import subprocess

    code = ("import sys\nfrom grn.checkpoints import load_generator, load_t2iv, load_tokenizer\n"
            "load_generator(sys.argv[1]); load_t2iv(sys.argv[2]); load_tokenizer(sys.argv[3])\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning') "
            "or m.startswith('grn.lit_modules') or m.startswith('grn.entrypoints'))\n"
            "assert not bad, bad\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code, str(legit["gen"]), str(legit["t2i"]), str(legit["tok"])],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
