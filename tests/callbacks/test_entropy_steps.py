"""The entropy-step histogram callback writes a PNG and logs histograms into an offline W&B run."""

import sys
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch.utils.data import DataLoader

from grn.callbacks.entropy_steps import EntropyStepHistogram, plot_entropy_steps
from grn.lit_modules.generator import GeneratorLitModule

sys.path.insert(0, str(Path(__file__).parent))
from wandb_records import history  # noqa: E402

from tiny_nets import quiet_cpu_trainer, tiny_generator_config  # noqa: E402

NET = tiny_generator_config(4, 4, 10, 8)
SAMPLER = {
    "schedule": "complexity_aware",
    "complexity_warmup_steps": 1,
    "alpha": 4,
    "complexity_min_steps": 2,
    "complexity_max_steps": 4,
    "k": 6.0,
    "b": 0.0,
    "cfg_scale": 1.0,
    "num_steps": 4,
}


def token_batches(n: int = 4):
    g = torch.Generator().manual_seed(0)
    data = [
        {"tokens": torch.randint(0, 16, (4, 8, 8), generator=g), "label": torch.tensor(i % 10)}
        for i in range(n * 4)
    ]
    return DataLoader(data, batch_size=4)


def test_plot_entropy_steps_png(tmp_path):
    png = plot_entropy_steps(np.array([2, 3, 3, 4]), np.array([0.9, 0.7, 0.4, 0.1]), tmp_path / "h.png")
    assert Image.open(png).size[0] > 100 and not list(tmp_path.glob(".*tmp*"))


def test_callback_writes_png_and_wandb_histograms(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    torch.manual_seed(0)
    module = GeneratorLitModule(net=NET, ema_decays=[0.9], lr=1e-3, sampler=SAMPLER)
    logger = WandbLogger(save_dir=str(tmp_path), project="grn-test", offline=True)
    cb = EntropyStepHistogram(every_n_steps=2, num_samples=12, sampler=SAMPLER, on_train_end=False)
    trainer = quiet_cpu_trainer(2, logger=logger, callbacks=[cb], default_root_dir=str(tmp_path))
    trainer.fit(module, train_dataloaders=token_batches())
    logger.experiment.finish()
    import wandb

    wandb.teardown()  # waits for the W&B service to flush the run file
    assert cb.last_png is not None and cb.last_png.is_file() and cb.last_png.parent.name == "entropy_steps"
    runs = list(tmp_path.rglob("run-*.wandb"))
    assert len(runs) == 1, "no offline W&B run was written"
    rows = [r for r in history(runs[0]) if "entropy_steps/steps" in r]
    assert len(rows) == 1  # logged once, at step 2
    steps_hist = rows[0]["entropy_steps/steps"]
    assert steps_hist["_type"] == "histogram" and sum(steps_hist["values"]) == 12  # one count per sample
    assert all(b == int(b) + 0.5 for b in steps_hist["bins"])  # one bin per step count
    ent_rows = [r for r in history(runs[0]) if "entropy_steps/entropy_per_step" in r]
    ent_hist = ent_rows[0]["entropy_steps/entropy_per_step"]
    assert ent_hist["_type"] == "histogram" and 2 <= len(ent_hist["values"]) <= 4  # one bar per step taken
    assert all(0.0 <= v <= 1.0 for v in ent_hist["values"])
    means = [r["entropy_steps/mean_steps"] for r in history(runs[0]) if "entropy_steps/mean_steps" in r]
    assert len(means) == 1 and 2 <= means[0] <= 4
