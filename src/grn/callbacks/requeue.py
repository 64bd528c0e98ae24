"""SLURM pre-emption: on the time-limit signal, checkpoint, requeue the job and stop — the single requeue owner.

SLURM sends a signal ``signal_delay_s`` before the time limit (``--signal=USR2@90``: submitit's default signal, sent
to every task). Three parties could react: Lightning's ``SLURMEnvironment(auto_requeue=True)``, submitit's own
handler, and this callback. Two owners requeue twice or requeue without a checkpoint, so ``train.py`` turns
Lightning's off and this callback replaces submitit's handler in the training process.

The handler only sets a flag; at the next batch end the ranks agree (any rank signalled → all act), every rank
takes part in writing ``last.ckpt`` (sharded checkpoints need all of them), rank 0 runs ``scontrol requeue``, and
the trainer stops. The requeued job keeps its job id, hence its run id (``$SLURM_JOB_ID``), run directory and W&B
run, and ``ckpt_path: auto`` continues from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)

__all__ = ["SlurmRequeue", "in_slurm_batch_job"]


def in_slurm_batch_job() -> bool:
    """True inside a SLURM job that can be requeued (not an interactive ``srun`` / ``salloc`` shell)."""
    return "SLURM_JOB_ID" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


class SlurmRequeue(L.Callback):
    """Checkpoint → ``scontrol requeue $SLURM_JOB_ID`` → stop, when one of ``signals`` arrives.

    Args:
        ckpt_path: where the checkpoint goes (the stage's ``checkpoints/last.ckpt``, which ``ckpt_path: auto``
            picks first).
        signals: signal names to handle (``USR2`` for submitit's ``--signal``, ``USR1`` for hand-written sbatch
            scripts; both by default).
        requeue_command: the command run on rank 0 (default ``["scontrol", "requeue", $SLURM_JOB_ID]``).
    """

    def __init__(
        self,
        ckpt_path: str | os.PathLike,
        signals: tuple[str, ...] = ("SIGUSR1", "SIGUSR2"),
        requeue_command: list[str] | None = None,
    ) -> None:
        self.ckpt_path = Path(ckpt_path)
        self.signals = tuple(s if s.startswith("SIG") else f"SIG{s}" for s in signals)
        self.requeue_command = requeue_command
        self.signalled = False
        self.requeued = False
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        # async-signal context: only set a flag; the work happens at a batch boundary on all ranks together
        log.warning("received %s: checkpoint and requeue at the end of this step", signal.Signals(signum).name)
        self.signalled = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for name in self.signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._handler)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        # one tiny all-reduce per step, so a signal seen by any rank stops all of them at the same step
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        trainer.save_checkpoint(self.ckpt_path)
        if trainer.is_global_zero:
            command = self.requeue_command or ["scontrol", "requeue", os.environ.get("SLURM_JOB_ID", "")]
            log.warning("checkpoint written to %s; requeueing: %s", self.ckpt_path, " ".join(command))
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                log.error("requeue failed (%s): %s", result.returncode, result.stderr.strip())
        trainer.strategy.barrier("grn_requeue")
        self.requeued = True
        trainer.should_stop = True
