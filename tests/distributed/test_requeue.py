"""SlurmRequeue: the signal only sets a flag; at the step's end the run checkpoints, requeues once and stops."""

import os
import signal
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader

from grn.callbacks.requeue import SlurmRequeue


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SignalAt(L.Callback):
    """Sends the time-limit signal to this process during step ``step`` (as SLURM would, at any moment)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR2)


def test_signal_checkpoints_requeues_and_stops(tmp_path):
    marker = tmp_path / "requeued"
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    requeue = SlurmRequeue(ckpt, requeue_command=[sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"])
    previous = signal.getsignal(signal.SIGUSR2)
    trainer = L.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[requeue, SignalAt(3)],
                        default_root_dir=tmp_path)
    trainer.fit(Tiny(), DataLoader(torch.randn(64, 4), batch_size=2))
    assert requeue.requeued and trainer.global_step == 4  # the step in flight finished, then the run stopped
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4
    assert marker.read_text() == "x"  # the requeue command ran exactly once
    assert signal.getsignal(signal.SIGUSR2) == previous  # the handler is handed back after the run


def test_no_signal_no_requeue(tmp_path):
    requeue = SlurmRequeue(tmp_path / "last.ckpt", requeue_command=["false"])
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[requeue])
    trainer.fit(Tiny(), DataLoader(torch.randn(8, 4), batch_size=2))
    assert not requeue.requeued and trainer.global_step == 3 and not (tmp_path / "last.ckpt").exists()
