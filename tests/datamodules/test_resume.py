"""Exact resume through a real Lightning checkpoint: after a restart the run sees the samples it would have seen."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from grn.datamodules.images import ImageShardDataModule


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.keys: list[str] = []

    def training_step(self, batch, batch_idx):
        self.keys.extend(batch["key"])
        return (batch["image"].mean() * self.w - 1) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path, dm, max_steps, ckpt_path=None, every=None):
    callbacks = []
    if every:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every,
                                                             save_top_k=-1, filename="{step}"))
    model = _Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(every), callbacks=callbacks,
                        num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return model.keys


@pytest.mark.parametrize(("num_workers", "stop"), [(0, 7), (2, 7), (0, 10), (2, 11)])
def test_resume_from_checkpoint_replays_the_uninterrupted_sequence(tmp_path, digit_shards, num_workers, stop):
    def dm():
        return ImageShardDataModule(train_shards=digit_shards, image_size=16, num_classes=10, batch_size=4,
                                    num_workers=num_workers, resampled=True, epoch_samples=40, shuffle_buffer=16,
                                    shuffle_initial=8, seed=3)

    full = _fit(tmp_path / "a", dm(), max_steps=14)  # 10 batches per epoch: crosses into epoch 1
    assert len(full) == 14 * 4
    first = _fit(tmp_path / "b", dm(), max_steps=stop, every=stop)
    assert first == full[: stop * 4]
    ckpt = tmp_path / "b" / "ckpt" / f"step={stop}.ckpt"
    state = torch.load(ckpt, weights_only=True)["ImageShardDataModule"]
    assert (state["epoch"], state["consumed"]) == divmod(stop, 10)  # a finished epoch resumes with the next
    rest = _fit(tmp_path / "c", dm(), max_steps=14, ckpt_path=ckpt)
    assert first + rest == full
