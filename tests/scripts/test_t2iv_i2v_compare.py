"""scripts/t2iv_i2v_compare.py: each checkpoint sampled in both I2V forms on the same real first frames, the
table and JSON it writes, and one-line argument errors (tiny untrained networks: plumbing, not learning)."""

import json

import pytest
import torch

from grn.lit_modules.t2iv import T2IVLitModule

from script_loader import load_script
from tiny_nets import save_tiny_joint_tokenizer, tiny_t2iv_config, tiny_text_encoder_config


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2v_compare")
    tok_path = root / "tok.ckpt"
    cfg = save_tiny_joint_tokenizer(tok_path)
    paths = {}
    for name, mode, ratio in (("plain", "region", 0.0), ("official", "first_frame", 0.5)):
        module = T2IVLitModule(net=tiny_t2iv_config(cfg["latent_dim"], cfg["hbq_rounds"], i2v_mode=mode),
                               text_encoder=tiny_text_encoder_config(), tokenizer_ckpt=str(tok_path),
                               ema_decays=[0.999], i2v_ratio=ratio)
        paths[name] = root / f"{name}.ckpt"
        torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, paths[name])
    return paths


def test_both_forms_for_each_checkpoint(ckpts, tmp_path, capsys):
    script = load_script("t2iv_i2v_compare")
    out = script.main([f"plain={ckpts['plain']}", f"official={ckpts['official']}", "--clips", "4", "--steps", "2",
                       "--out", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == out
    res = out["results"]
    assert res["plain"]["network_i2v_mode"] == "region" and res["official"]["i2v_ratio"] == 0.5
    for r in res.values():
        assert set(r["modes"]) == {"first_frame", "region"}
        for mode, m in r["modes"].items():
            assert m["i2v_mode"] == mode and m["clips"] == 4 and m["first_frame_labels_identical"] == 1.0
            assert 0.0 <= m["direction_accuracy"] <= 1.0
    printed = capsys.readouterr().out
    assert "| checkpoint | trained i2v_ratio | I2V `first_frame` | I2V `region` |" in printed
    assert "| official | 0.5 |" in printed


def test_argument_errors(ckpts, tmp_path):
    script = load_script("t2iv_i2v_compare")
    with pytest.raises(SystemExit):
        script.main([str(ckpts["plain"])])  # no NAME=
    with pytest.raises(SystemExit):
        script.main([f"a={ckpts['plain']}", "--clips", "400"])
    with pytest.raises(FileNotFoundError, match="given as a="):
        script.main([f"a={tmp_path / 'none.ckpt'}"])
