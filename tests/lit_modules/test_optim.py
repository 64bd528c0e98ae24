"""`_partial_` optimisers and LR schedules (grn.lit_modules.optim): built over the module's own (possibly sharded)
parameters at the module's learning rate, weight decay only on matrices, the warm-up factors, and the optimiser
keys of earlier releases rejected with the key they moved to."""

import pytest
import torch

from grn.lit_modules.generator import GeneratorLitModule
from grn.lit_modules.optim import adamw, build_optimizer, decay_groups, warmup_constant

NET = {"_target_": "grn.models.generator.build_generator", "size": "tiny", "latent_dim": 2, "hbq_rounds": 2,
       "num_classes": 3, "input_size": 4}


def test_configure_optimizers_builds_the_partial_over_the_live_parameters():
    module = GeneratorLitModule(
        net=NET, lr=3e-4, optimizer=adamw(betas=[0.8, 0.9], weight_decay=0.05),
        lr_scheduler={"_target_": "grn.lit_modules.optim.warmup_constant", "_partial_": True, "warmup_steps": 4,
                      "start_factor": 0.1})
    out = module.configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and out["lr_scheduler"]["interval"] == "step"
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in module.net.parameters()}  # the network's own tensors, not copies; no EMA
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and free["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim <= 1 for p in free["params"])
    assert decayed["betas"] == (0.8, 0.9) and free["betas"] == (0.8, 0.9)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # start + (1 - start)·min(1, (s + 1)/4) with start 0.1: 0.325, 0.55, 0.775, 1, 1, 1 (times lr)
    want = 3e-4 * torch.tensor([0.325, 0.55, 0.775, 1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(lrs, dtype=torch.float64), want,
                               rtol=1e-12, atol=0)  # float64 LR arithmetic


def test_no_scheduler_is_a_constant_lr_and_zero_warmup_is_constant_too():
    module = GeneratorLitModule(net=NET, lr=1e-3)
    assert isinstance(module.configure_optimizers(), torch.optim.AdamW)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = warmup_constant(opt, warmup_steps=0)
    assert sched.get_last_lr() == [1.0]


def test_decay_groups_and_a_non_partial_optimizer_is_an_error():
    lin = torch.nn.Linear(3, 2)
    groups = decay_groups(lin)
    assert [len(g["params"]) for g in groups] == [1, 1] and groups[1]["weight_decay"] == 0.0
    assert len(decay_groups(lin, no_decay_1d=False)) == 1
    with pytest.raises(ValueError, match="_partial_: true"):
        build_optimizer({"_target_": "torch.optim.AdamW", "params": [torch.nn.Parameter(torch.zeros(1))]},
                        groups, lr=1e-3)
