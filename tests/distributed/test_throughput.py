"""Throughput: samples/s and tokens/s per logging window, from the real batches."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from grn.callbacks.throughput import Throughput, batch_size_and_tokens
from grn.datamodules.tokens import TensorDictDataset


class TokenModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (self.w - batch["tokens"].float().mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_batch_size_and_tokens():
    module = TokenModule()
    assert batch_size_and_tokens(module, {"tokens": torch.zeros(5, 4, 8, 6, dtype=torch.long)}) == (5, 5 * 48)
    assert batch_size_and_tokens(module, {"image": torch.zeros(3, 3, 32, 32)}) == (3, None)
    module.tokenizer = type("Tok", (), {"spatial_stride": 4})()
    assert batch_size_and_tokens(module, {"image": torch.zeros(3, 3, 32, 32)}) == (3, 3 * 64)


def test_logged_rates_are_consistent(tmp_path):
    tokens = torch.zeros(40, 2, 4, 4, dtype=torch.long)
    data = TensorDictDataset(tokens=tokens, label=torch.zeros(40, dtype=torch.long))
    cb = Throughput(log_every_n_steps=2)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    trainer.fit(TokenModule(), DataLoader(data, batch_size=4))
    m = trainer.callback_metrics
    assert m["perf/samples_per_sec"] > 0
    # 16 token positions per sample
    assert m["perf/tokens_per_sec"].item() == pytest.approx(16 * m["perf/samples_per_sec"].item(), rel=1e-5)
    assert m["perf/step_time"] > 0 and "perf/mfu" not in m  # MFU is measured on CUDA only
