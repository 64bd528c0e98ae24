"""The checkpoint format in one place (grn.checkpoints.layout): the export key, the EMA entries and how a stored EMA
is written into a network, and an export loading as its EMA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grn.checkpoints import EXPORT_KEY, build_from_config, load_generator, weights_only_ema
from grn.checkpoints.layout import ema_prefix, is_export, load_ema
from grn.models.ema import EMA
from tiny_nets import tiny_generator_config

SRC = Path(__file__).parents[2] / "src" / "grn"


def test_the_export_key_is_spelled_once():
    spelled = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if f'"{EXPORT_KEY}"' in p.read_text()]
    assert spelled == ["checkpoints/layout.py"]


def _run_checkpoint():
    """A generator checkpoint in the training layout: live weights under net., an EMA (other values) under
    emas.ema1.; returns (checkpoint, the live net, the EMA net)."""
    cfg = tiny_generator_config(2, 2, 10, 4)
    torch.manual_seed(0)
    net = build_from_config(cfg, {"generator"}, "test", "net")
    averaged = build_from_config(cfg, {"generator"}, "test", "net")
    with torch.no_grad():
        for p in averaged.parameters():
            p.add_(0.5)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    state.update({ema_prefix("ema1") + k: v for k, v in EMA(averaged, 0.0).state_dict().items()})
    return {"hyper_parameters": {"net": cfg}, "state_dict": state, "global_step": 3}, net, averaged


def test_load_ema_writes_what_ema_copy_to_would():
    ckpt, net, averaged = _run_checkpoint()
    fresh = build_from_config(ckpt["hyper_parameters"]["net"], {"generator"}, "test", "net")
    load_ema(fresh, ckpt["state_dict"], ema_prefix("ema1"), "run.ckpt", "ema1")
    for (name, p), q in zip(fresh.named_parameters(), averaged.parameters()):
        assert torch.equal(p, q), name


def test_load_ema_refuses_what_does_not_fit():
    ckpt, net, _ = _run_checkpoint()
    state = ckpt["state_dict"]
    with pytest.raises(KeyError, match=r"checkpoint run.ckpt has no EMA named 'ema2'"):
        load_ema(net, state, ema_prefix("ema2"), "run.ckpt", "ema2")
    key = next(k for k in state if k.startswith("emas.ema1.shadow__"))
    with pytest.raises(KeyError, match="1 missing"):
        load_ema(net, {k: v for k, v in state.items() if k != key}, ema_prefix("ema1"), "run.ckpt", "ema1")
    with pytest.raises(KeyError, match="1 unexpected .*shadow__extra"):
        load_ema(net, {**state, "emas.ema1.shadow__extra": torch.zeros(1)}, ema_prefix("ema1"), "run.ckpt", "ema1")
    with pytest.raises(KeyError, match="has shape"):  # copy_ would broadcast it silently
        load_ema(net, {**state, key: state[key].flatten()[:1]}, ema_prefix("ema1"), "run.ckpt", "ema1")


def test_an_export_is_marked_and_loads_its_ema_as_final_weights(tmp_path):
    ckpt, _, averaged = _run_checkpoint()
    export = weights_only_ema(ckpt)
    assert is_export(export) and export[EXPORT_KEY] == {"ema": "ema1"} and not is_export(ckpt)
    assert set(export["state_dict"]) == {k for k in ckpt["state_dict"] if k.startswith("net.")}
    torch.save(export, tmp_path / "export.ckpt")
    loaded, _ = load_generator(tmp_path / "export.ckpt", ema="ema1")  # no EMA entries: the weights are final
    for (name, p), q in zip(loaded.named_parameters(), averaged.parameters()):
        assert torch.equal(p, q), name
