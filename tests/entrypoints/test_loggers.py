"""Loggers from config: CSV / TensorBoard / W&B; a resumed stage continues the same (offline) W&B run."""

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from grn.entrypoints.loggers import WANDB_ID_FILE, build_loggers, wandb_run_id


def test_wandb_run_id_is_created_once_and_reused(tmp_path):
    first = wandb_run_id(tmp_path / "c2i")
    assert (tmp_path / "c2i" / WANDB_ID_FILE).read_text().strip() == first
    assert wandb_run_id(tmp_path / "c2i") == first  # a resume reads it back
    assert wandb_run_id(tmp_path / "tokenizer") != first  # one W&B run per stage


def test_all_loggers_build_and_resume_continues_the_wandb_run(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_cfg("train", ["logger=all"])
    stage_dir = Path(cfg.paths.run_dir) / "c2i"
    loggers = build_loggers(cfg, "c2i", stage_dir)
    assert {type(lg) for lg in loggers} == {CSVLogger, TensorBoardLogger, WandbLogger}
    wb = next(lg for lg in loggers if isinstance(lg, WandbLogger))
    run_id = (stage_dir / WANDB_ID_FILE).read_text().strip()
    assert wb.experiment.id == run_id and wb.experiment.group == "test-run" and wb.experiment.project == "grn"
    wb.log_metrics({"train/loss": 1.0}, step=1)
    wb.experiment.finish()
    # the "resumed" stage: new logger objects, the same W&B run
    again = next(lg for lg in build_loggers(cfg, "c2i", stage_dir) if isinstance(lg, WandbLogger))
    assert again.experiment.id == run_id
    again.experiment.finish()
    runs = sorted(p.name for p in Path(cfg.paths.run_dir).rglob("offline-run-*"))
    # offline-run-<time>-<id>, with a "-1" suffix when both runs start within the same second
    assert len(runs) == 2 and all(r.split("-")[3] == run_id for r in runs)
