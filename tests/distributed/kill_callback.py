"""Test helpers imported by training subprocesses through PYTHONPATH: SIGKILL the whole training process group at
a chosen step of a chosen stage (a crash with no chance to clean up or save anything), and pace a first run."""

import os
import signal
from pathlib import Path

import lightning as L


class KillAt(L.Callback):
    """Rank 0 kills its process group (all DDP ranks) when stage ``stage`` is about to run step ``step + 1``."""

    def __init__(self, stage: str, step: int) -> None:
        self.stage, self.step = stage, int(step)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        if Path(trainer.default_root_dir).name == self.stage and trainer.global_step == self.step:
            if trainer.is_global_zero:
                os.killpg(os.getpgrp(), signal.SIGKILL)


class PaceFirstRun(L.Callback):
    """Sleeps ``seconds`` per step until SLURM restarts the job ($SLURM_RESTART_COUNT), so a test can signal the
    first run while it is still training without the whole run having to be long."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0:
            import time

            time.sleep(self.seconds)
