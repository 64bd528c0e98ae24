"""scripts/tokenizer_recipe_compare.py: the two arms differ in exactly the released recipe's settings, and a toy
run writes results and the table."""

import pytest
from hydra.core.global_hydra import GlobalHydra

from script_loader import load_script
from tiny_nets import TOY_TINY_JOINT

TOY = [*TOY_TINY_JOINT, "stages.tokenizer.lit_module.lpips.net=vgg"]  # AlexNet's stride needs >= 32-pixel frames
RECIPE_CHANGES = {  # what the released recipe changes against our defaults (official_update.md D1-D7)
    "adaptive_gan_weight": (True, False),
    "optimizer": ({"_target_": "torch.optim.AdamW", "_partial_": True, "betas": [0.5, 0.9], "weight_decay": 0.0},
                  {"_target_": "torch.optim.AdamW", "_partial_": True, "betas": [0.9, 0.95], "weight_decay": 0.01}),
    "decay_1d_and_bias": (True, False),
    "ema_decays": ([0.99], [0.9999]),
    "ema_warmup": (True, False),
    "joint_update": ("joint", "per_batch"),
}


@pytest.fixture(scope="module")
def compare():
    return load_script("tokenizer_recipe_compare")


def lit_module(compare, arm):
    GlobalHydra.instance().clear()
    cfg = compare.compose_arm(arm, 7, 3, [])
    GlobalHydra.instance().clear()
    assert cfg.stages.tokenizer.max_steps == 7 and cfg.seed == 3
    return cfg.stages.tokenizer.lit_module


def test_arms_differ_in_the_recipe_only(compare):
    ours, released = (lit_module(compare, arm) for arm in ("ours", "released"))
    assert ours.discriminator.norm == "group" and released.discriminator.norm == "batch"
    assert ours.discriminator.keys() == released.discriminator.keys()
    assert {k: v for k, v in ours.discriminator.items() if k != "norm"} == {
        k: v for k, v in released.discriminator.items() if k != "norm"
    }
    assert ours.lpips == released.lpips and ours.lpips.net == "alex"
    differing = {k for k in ours.keys() | released.keys() if k != "discriminator" and ours.get(k) != released.get(k)}
    assert differing == set(RECIPE_CHANGES)
    for key, (a, b) in RECIPE_CHANGES.items():
        assert (ours[key], released[key]) == (a, b), key
    for key, value in {"l1_weight": 1.0, "lpips_weight": 0.2, "gan_weight": 0.3, "disc_start": 0, "lr": 1e-3}.items():
        assert ours[key] == released[key] == value, key


def test_toy_comparison_writes_results_and_table(compare, tmp_path):
    argv = ["--steps", "2", "--workdir", str(tmp_path), "--out", str(tmp_path / "t.md")]
    results = compare.main([*argv, *[a for o in TOY for a in ("--override", o)]])
    by_arm = {r["arm"]: r for r in results}
    assert by_arm["ours"]["tokenizer_updates"] == 2 and by_arm["released"]["tokenizer_updates"] == 4
    assert by_arm["released"]["discriminator_norm"] == "batch"
    for r in results:
        for weights in ("ema", "live"):
            assert all(r[weights][part]["psnr"] > 0 for part in ("image", "video"))
    table = (tmp_path / "t.md").read_text()
    assert table.count("| ours | 0.001 | 0 |") == 2 and table.count("| released | 0.001 | 0 |") == 2
    assert compare.main([*argv, "--report-only"]) == results  # results are kept and re-read
