"""Sample grids and the FID/IS proxy during generator training; reconstruction grids during tokenizer validation."""

import shutil
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
from eval_fixtures import make_checkpoints  # noqa: E402

from grn.callbacks.fid_is import FidIsProxy  # noqa: E402
from grn.callbacks.recon_grid import ReconstructionGrid  # noqa: E402
from grn.callbacks.sample_grid import SampleGrid  # noqa: E402
from grn.lit_modules.generator import GeneratorLitModule  # noqa: E402

from tiny_nets import quiet_cpu_trainer, tiny_generator_config  # noqa: E402

NET = tiny_generator_config(4, 4, 10, 8)
SAMPLER = {"num_steps": 2, "cfg_scale": 1.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits_classifier_file):
    folder = tmp_path_factory.mktemp("cb")
    _, tok = make_checkpoints(folder)
    shutil.copyfile(digits_classifier_file, folder / "digits.pt")
    return folder, tok


def tokens():
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        [
            {"tokens": torch.randint(0, 16, (4, 8, 8), generator=g), "label": torch.tensor(i % 10)}
            for i in range(8)
        ],
        batch_size=4,
    )


def test_sample_grid_and_fid_proxy(setup, tmp_path):
    folder, tok = setup
    torch.manual_seed(0)
    module = GeneratorLitModule(net=NET, tokenizer_ckpt=str(tok), ema_decays=[0.9], lr=1e-3, sampler=SAMPLER)
    grid = SampleGrid(every_n_steps=2, num_classes=3, per_class=2, on_train_end=False)
    proxy = FidIsProxy(
        every_n_steps=2,
        num_per_class=2,
        feature_extractor_weights_path=str(folder / "digits.pt"),
        reference_stats=str(tmp_path / "ref.npz"),
        build_reference=True,
        data={"_target_": "grn.datamodules.builtin.DigitsDataModule", "image_size": 32},
        batch_size=8,
        on_train_end=False,
    )
    trainer = quiet_cpu_trainer(2, callbacks=[grid, proxy], default_root_dir=str(tmp_path))
    trainer.fit(module, train_dataloaders=tokens())
    assert grid.last_png == tmp_path / "samples" / "step0000002.png"
    assert Image.open(grid.last_png).size == (2 + 2 * 34, 2 + 3 * 34)  # 3 rows (classes) of 2
    assert set(proxy.last) == {
        "proxy/digits_is@20",
        "proxy/digits_fid@20",
    }  # labelled as a proxy, with its size
    assert proxy.last["proxy/digits_fid@20"] > 0 and (tmp_path / "ref.npz").is_file()


def test_reconstruction_grid_after_validation(tmp_path):
    cb = ReconstructionGrid(num_images=3)

    class Tok(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def ema_tokenizer(self):
            class Identity(torch.nn.Module):
                def forward(self, x, quantize=True):
                    return -x, x, x  # a visibly different "reconstruction"

            return Identity()

        def validation_step(self, batch, batch_idx):
            return None

    trainer = L.Trainer(
        logger=False,
        callbacks=[cb],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
    )
    data = DataLoader([{"image": torch.rand(3, 16, 16) * 2 - 1} for _ in range(5)], batch_size=4)
    trainer.validate(Tok(), dataloaders=data)
    assert cb.last_file == tmp_path / "reconstructions" / "step0000000.png"
    assert Image.open(cb.last_file).size == (2 + 3 * 18, 2 + 2 * 18)  # originals above reconstructions
