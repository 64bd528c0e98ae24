"""grn.checkpoints: a stored config builds only grn's registered classes with plain arguments, never through Hydra;
a file holding pickled objects is refused by name. Every refusal leaves its payload unrun."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from grn.checkpoints import (
    UnsafeCheckpointError,
    build_from_config,
    check_stored_configs,
    read_checkpoint,
    register,
    validated,
)
from grn.entrypoints.common import CONF_DIR
from grn.models.generator import GRN
from grn.models.tokenizer import HBQTokenizer

from tiny_nets import tiny_generator_config

sys.path.insert(0, str(Path(__file__).parent))
from payloads import OpenForWriting, config_payloads, opener  # noqa: E402

RULE = "only grn's own registered classes are built from checkpoints"


def refused(cfg, marker: Path, match: str, allowed=("generator",)) -> str:
    with pytest.raises(UnsafeCheckpointError, match=match) as err:
        build_from_config(cfg, set(allowed), "/runs/x.ckpt", "hyper_parameters.net")
    message = str(err.value)
    assert "\n" not in message and message.startswith("/runs/x.ckpt: ") and RULE in message
    assert not marker.exists()
    return message


def test_a_registered_config_builds_by_a_direct_call():
    net = build_from_config(tiny_generator_config(2, 2, 10, 4), {"generator"}, "f.ckpt", "hyper_parameters.net")
    assert isinstance(net, GRN) and net.num_classes == 10
    tok = build_from_config(OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model/tokenizer/tiny.yaml")),
                            {"tokenizer"}, "f.ckpt")
    assert isinstance(tok, HBQTokenizer)


@pytest.mark.parametrize("group", ["generator", "tokenizer", "text_encoder"])
def test_every_model_config_in_conf_is_registered_with_accepted_arguments(group):
    """What train.py stores in hyper_parameters (net / tokenizer / text_encoder) passes the checks unchanged."""
    kinds = {"generator": {"generator", "t2iv"}, "tokenizer": {"tokenizer"}, "text_encoder": {"text_encoder"}}
    files = sorted((Path(CONF_DIR) / "model" / group).glob("*.yaml"))
    assert files
    for path in files:
        cfg = OmegaConf.to_container(OmegaConf.load(path))  # ${...} stay strings: only names and types are checked
        fn, kwargs = validated(cfg, kinds[group], path)
        assert callable(fn) and "_target_" not in kwargs


def test_targets_outside_grn_are_refused(tmp_path):
    marker = tmp_path / "marker"
    payloads = config_payloads(marker, tiny_generator_config(2, 2, 10, 4))
    refused(payloads["open"][0], marker,
            "hyper_parameters.net._target_: 'builtins.open' is not a registered generator class")
    refused(payloads["touch"][0], marker, "'pathlib.Path.touch' is not a registered")
    refused(payloads["torch_load"][0], marker, "'torch.load' is not a registered")
    refused({"size": "tiny"}, marker, "None is not a registered")
    refused(["grn.models.generator.build_generator"], marker, "not a config dict")


def test_a_grn_class_of_another_kind_is_refused(tmp_path):
    cfg = {**tiny_generator_config(2, 2, 10, 4), "_target_": "grn.models.tokenizer.HBQTokenizer"}
    refused(cfg, tmp_path / "m", "'grn.models.tokenizer.HBQTokenizer' is a registered tokenizer, not a generator")


def test_nested_targets_hydra_keys_and_non_plain_values_are_refused(tmp_path):
    marker = tmp_path / "marker"
    base = tiny_generator_config(2, 2, 10, 4)
    refused({**base, "size": opener(marker)}, marker,
            r"hyper_parameters.net.size._target_: a nested target 'builtins.open' \(in an argument of "
            "'grn.models.generator.build_generator'\\)")
    refused({**base, "num_classes": [1, {"x": opener(marker)}]}, marker,
            r"hyper_parameters.net.num_classes\[1\].x._target_: a nested target 'builtins.open'")
    refused({**base, "size": {"_args_": ["tiny"]}}, marker, r"net.size._args_: the Hydra key '_args_'")
    refused({**base, "_partial_": True}, marker, "hyper_parameters.net._partial_: the Hydra key '_partial_'")
    refused({**base, "_convert_": "all"}, marker, "the Hydra key '_convert_'")
    refused({**base, "size": b"tiny"}, marker, r"net.size: a builtins.bytes, not a plain value")
    refused({**base, "size": torch.zeros(1)}, marker, "a torch.Tensor, not a plain value")
    refused({**base, "size": {1: "tiny"}}, marker, "a non-string key 1")


def test_unknown_arguments_are_refused(tmp_path):
    refused({**tiny_generator_config(2, 2, 10, 4), "f": "/etc/passwd"}, tmp_path / "m",
            "hyper_parameters.net.f: 'grn.models.generator.build_generator' takes no argument 'f'")


def test_register_takes_only_grn_targets():
    with pytest.raises(ValueError, match="only grn's own classes"):
        register("torch.load", "generator")
    register("grn.models.discriminator.PatchDiscriminator", "discriminator")  # registering again is harmless


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_pickled_payload_file_is_refused_clearly(tmp_path, writer, mmap):
    marker, path = tmp_path / "marker", tmp_path / "evil.ckpt"
    if writer == "torch.save":
        torch.save({"hyper_parameters": OpenForWriting(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(OpenForWriting(marker)))
    with pytest.raises(UnsafeCheckpointError, match="refused to load: it holds pickled objects") as err:
        read_checkpoint(path, mmap=mmap)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and "weights_only=True" in message
    assert "Re-running" not in message  # not torch's advice to load it with weights_only=False
    assert not marker.exists()


def test_plain_checkpoints_read_as_before(tmp_path):
    path = tmp_path / "ok.ckpt"
    torch.save({"hyper_parameters": {"net": tiny_generator_config(2, 2, 10, 4)}, "state_dict": {"w": torch.ones(2)}},
               path)
    for mmap in (False, True):
        ckpt = read_checkpoint(path, mmap=mmap)
        assert ckpt["hyper_parameters"]["net"]["size"] == "tiny" and torch.equal(ckpt["state_dict"]["w"],
                                                                                   torch.ones(2))


def test_check_stored_configs_skips_the_callers_own_values(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "x.ckpt"
    torch.save({"hyper_parameters": {"net": opener(marker), "text_encoder": None}}, path)
    check_stored_configs(path, {"net": {"generator"}, "text_encoder": {"text_encoder"}}, given={"net": {}})
    with pytest.raises(UnsafeCheckpointError, match="hyper_parameters.net._target_: 'builtins.open'"):
        check_stored_configs(path, {"net": {"generator"}})
    assert not marker.exists()
