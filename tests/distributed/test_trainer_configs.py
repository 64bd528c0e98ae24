"""The trainer and SLURM launcher configs compose and build what they say (no processes are started)."""

import pytest
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy

from grn.distributed.fsdp import FSDP2Strategy


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp", "fsdp"])
def test_trainer_configs_instantiate(compose_cfg, name, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "3")  # the node count of an allocation is picked up
    overrides = [f"trainer={name}", "trainer.accelerator=cpu"]
    if name in ("ddp", "fsdp"):
        overrides.append("trainer.devices=2")
    cfg = compose_cfg("train", overrides)
    trainer = instantiate(cfg.trainer, max_steps=1, logger=False, enable_checkpointing=False)
    expected = {"ddp": DDPStrategy, "fsdp": FSDP2Strategy}.get(name)
    if expected is not None:
        assert isinstance(trainer.strategy, expected) and trainer.num_nodes == 3
        assert trainer.num_devices == 2
    if name == "fsdp":
        assert str(cfg.trainer.precision) == "32-true"  # casting is the FSDP policy's job
        assert trainer.strategy.mp_policy() is None  # fp32 on CPU under "auto"


@pytest.mark.parametrize("launcher", ["slurm", "slurm_multinode", "slurm_cpu"])
def test_slurm_launchers_have_one_requeue_owner(compose_cfg, launcher):
    cfg = compose_cfg("train", [f"hydra/launcher={launcher}"])
    conf = cfg.hydra.launcher
    assert conf._target_.endswith("SlurmLauncher")
    assert conf.max_num_timeout == 0  # submitit never requeues; grn.callbacks.requeue does
    assert conf.signal_delay_s > 0 and cfg.requeue == "auto"
    if conf.gpus_per_node:
        assert conf.tasks_per_node == conf.gpus_per_node  # one task per GPU
    assert (conf.nodes > 1) == (launcher == "slurm_multinode")
