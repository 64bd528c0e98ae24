"""Optimisers and LR schedules from ``_partial_`` configs, built in ``configure_optimizers`` (after FSDP2 has
sharded the network, so the optimiser holds the sharded parameters).

A module's ``optimizer`` hyper-parameter is a Hydra config such as::

    optimizer: {_target_: torch.optim.AdamW, _partial_: true, betas: [0.9, 0.95], weight_decay: 0.0}
    lr_scheduler: {_target_: grn.lit_modules.optim.warmup_constant, _partial_: true, warmup_steps: 1000}

The learning rate is not part of it: the module computes it (``blr · global_batch / 256`` or a fixed ``lr``) and
passes it in, so one config serves every world size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate

def adamw(**kwargs: Any) -> dict[str, Any]:
    """The ``_partial_`` AdamW config with ``kwargs`` (betas, weight_decay, ...): a module's default optimiser."""
    return {"_target_": "torch.optim.AdamW", "_partial_": True, **kwargs}


def decay_groups(module: torch.nn.Module, no_decay_1d: bool = True,
                 weight_decay: float | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``module``'s trainable parameters: matrices (ndim ≥ 2, not a bias) are decayed;
    with ``no_decay_1d`` 1-D parameters and biases form a group with weight decay 0 (the usual AdamW rule, and
    the released tokenizer's, facts D5), else everything is decayed. ``weight_decay`` sets the decayed group's
    value; None leaves it to the optimiser's own setting. Empty groups are left out."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            exempt = no_decay_1d and (p.ndim <= 1 or name.endswith("bias"))
            (no_decay if exempt else decay).append(p)
    decayed: dict[str, Any] = {"params": decay}
    if weight_decay is not None:
        decayed["weight_decay"] = weight_decay
    groups = [decayed, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(config: Mapping[str, Any], groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """``instantiate(config)`` (a ``_partial_`` optimiser) applied to ``groups`` at learning rate ``lr``."""
    factory = instantiate(dict(config))
    if not callable(factory) or isinstance(factory, torch.optim.Optimizer):
        raise ValueError(f"optimizer config {dict(config)} must be `_partial_: true` (it is built after sharding)")
    return factory(groups, lr=lr)


def build_scheduler(config: Mapping[str, Any] | None, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """The Lightning ``lr_scheduler`` entry (stepped every optimiser step) from a ``_partial_`` config, or None."""
    if not config:
        return None
    return {"scheduler": instantiate(dict(config))(optimizer), "interval": "step"}


def warmup_constant(optimizer: torch.optim.Optimizer, warmup_steps: int = 0,
                    start_factor: float = 0.0, stop_short: bool = False) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``start_factor · lr`` to ``lr`` over ``warmup_steps`` steps, then constant.

    The factor at step s is ``start + (1 - start) · min(1, (s + 1) / warmup_steps)``: the first step already moves
    off ``start_factor`` (step 0 trains at ``(1/warmup)·lr`` for ``start_factor = 0``, as before this module).

    ``stop_short``: the released T2I/T2V trainer's schedule (``t2iv_train.py:train_one_ep``, ratio
    ``wp0 + (1 - wp0)·g/wp_it`` at its iteration g = s + 1, written only while it is below 1): the same factors
    for the first ``warmup_steps - 1`` steps, then it stays at the last of them,
    ``start + (1 - start)·(warmup_steps - 1)/warmup_steps``, and never reaches ``lr`` (0.9801·lr for the
    released 50 steps from 0.005). Its warm-up also ends with epoch 0; here it runs over the first steps of
    the run, whatever the epoch length."""
    warmup = max(int(warmup_steps), 0)
    start = float(start_factor)
    top = max(warmup - 1, 0) if stop_short else warmup

    def factor(step: int) -> float:
        if not top:  # no warm-up (the released trainer never writes an LR for warmup_steps = 1 either)
            return 1.0
        return start + (1.0 - start) * min(top, step + 1) / warmup

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
