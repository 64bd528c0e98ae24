"""``python train.py``: train the stages of a task (tokenizer, c2i, ...) in pipeline order.

Each stage trains in ``<run_dir>/<stage>/`` with its own checkpoints and logs; ``ckpt_path: auto`` resumes a stage
from its newest checkpoint, so re-running a finished run only re-checks it. With ``report: true`` the run ends with
the evaluation report (sample grid + metrics.json) in the run directory.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from grn.entrypoints.common import CONF_DIR, quiet_warnings, remove_stale_temp_files
from grn.entrypoints.errors import ConfigError, cli_errors
from grn.entrypoints.validate import validate_train

if TYPE_CHECKING:  # Lightning and the modules are imported once the config is validated (fast one-line errors)
    import lightning as L

log = logging.getLogger("grn.train")

# Stages run in this order when a task defines several of them.
PIPELINE_ORDER = ("tokenizer", "c2i", "t2i", "t2v")


def stage_names(cfg: DictConfig) -> list[str]:
    stages = list(cfg.get("stages") or {})
    unknown = [s for s in stages if s not in PIPELINE_ORDER]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; known stages: {list(PIPELINE_ORDER)}")
    if not stages:
        raise ConfigError("no stages to train: choose a task, e.g. task=tokenizer or task=c2i")
    chosen = stages if cfg.get("run_stages") is None else list(cfg.run_stages)
    missing = [s for s in chosen if s not in stages]
    if missing:
        raise ConfigError(f"run_stages names {missing}, which the config does not define (defined: {stages})")
    return sorted(chosen, key=PIPELINE_ORDER.index)


def validate(cfg: DictConfig) -> list[str]:
    """Check the config before any heavy work (:mod:`grn.entrypoints.validate`); returns the stages to run."""
    from grn.checkpoints.files import checkpoint_problem  # local: this module's import stays free of torch

    names = stage_names(cfg)
    for name in names:
        stage = cfg.stages[name]
        for key in ("datamodule", "lit_module", "max_steps"):
            if stage.get(key) is None:
                raise ConfigError(f"stage {name!r} has no {key!r}; is its task config complete?")
        ckpt = stage.get("tokenizer_ckpt")
        if ckpt is not None and "tokenizer" not in names and not Path(ckpt).is_file():
            raise ConfigError(
                f"stage {name!r} needs a trained tokenizer but {ckpt} does not exist: train it in the same run "
                f"(task with a tokenizer stage) or set stages.{name}.tokenizer_ckpt=<path>"
            )
        problem = checkpoint_problem(ckpt) if ckpt is not None and "tokenizer" not in names else None
        if problem:
            raise ConfigError(f"stages.{name}.tokenizer_ckpt={ckpt} is unusable: {problem}")
    if cfg.get("report") and "c2i" not in names:
        raise ConfigError("report=true needs a c2i stage in this run: choose a task with one, or report=false")
    validate_train(cfg, names)
    problem = checkpoint_problem(cfg.ckpt_path) if cfg.ckpt_path not in (None, "auto") else None
    if problem:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is not a checkpoint: {problem} "
            "(use auto, null, a .ckpt file or a complete sharded .ckpt folder)"
        )
    return names


def trainer_precision(trainer: DictConfig) -> Any:
    """``trainer.precision``, with ``auto`` resolved (:mod:`grn.precision`): ``bf16-mixed`` on CUDA and on CPUs
    with native bf16 matmul, else ``32-true``. Under ``trainer=fsdp`` ``auto`` is ``32-true``: the strategy's
    mixed-precision policy does the casting there, and autocast on top of it would cast twice."""
    from grn.precision import lightning_precision

    precision = trainer.get("precision")
    if precision != "auto":
        return precision
    strategy = trainer.get("strategy")
    target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else ""
    if target.endswith("FSDP2Strategy"):
        log.info("trainer.precision=auto under FSDP2Strategy: 32-true (trainer.strategy.mixed_precision casts)")
        return "32-true"
    return lightning_precision("auto", trainer.get("accelerator"))


def resume_path(cfg: DictConfig, ckpt_dir: Path) -> str | None:
    if cfg.ckpt_path == "auto":
        from grn.checkpoints.files import newest_checkpoint

        found = newest_checkpoint(ckpt_dir)
        return str(found) if found else None
    return cfg.ckpt_path


def build_callbacks(cfg: DictConfig, name: str, ckpt_dir: Path) -> list[L.Callback]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from grn.callbacks.progress import StepProgressBar

    callbacks = []
    for conf in (cfg.get("callbacks") or {}).values():
        if conf is None:  # a callback switched off with callbacks.<name>=null
            continue
        cb = instantiate(conf)
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = str(ckpt_dir)
        if isinstance(cb, StepProgressBar):
            cb.description = name
        callbacks.append(cb)
    return callbacks


def requeue_enabled(cfg: DictConfig) -> bool:
    """``requeue: auto`` means: inside a SLURM batch job."""
    from grn.callbacks.requeue import in_slurm_batch_job

    setting = cfg.get("requeue", "auto")
    return in_slurm_batch_job() if setting == "auto" else bool(setting)


def trainer_kwargs(cfg: DictConfig, module: L.LightningModule) -> dict[str, Any]:
    """Strategy and cluster plugins that depend on the module and the environment."""
    kwargs: dict[str, Any] = {}
    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, DictConfig) and "find_unused_parameters" in strategy:
        # the GAN tokenizer's two backward passes each skip one network; DDP must be told (only where needed:
        # the search for unused parameters costs a graph traversal per step)
        if getattr(module, "ddp_find_unused_parameters", False) and not strategy.find_unused_parameters:
            kwargs["strategy"] = instantiate(strategy, find_unused_parameters=True)
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from grn.distributed.checkpoint_io import AtomicCheckpointIO

    if not cfg.trainer.get("plugins"):
        # checkpoint files are written under a temporary name and renamed (a kill never leaves half a file)
        kwargs["plugins"] = [AtomicCheckpointIO()]
        if SLURMEnvironment.detect():
            # one requeue owner: grn.callbacks.requeue (see there); Lightning's own SIGUSR1 requeue stays off
            kwargs["plugins"].append(SLURMEnvironment(auto_requeue=False))
    return kwargs


def stage_batching(cfg: DictConfig, name: str) -> dict[str, int] | None:
    """With ``stages.<name>.global_batch_size`` set: the per-rank ``batch_size`` and ``accumulate_grad_batches``
    that give that global batch on this launch's world size, the stage's ``datamodule.batch_size`` being the
    largest micro-batch a device holds (:mod:`grn.distributed.global_batch`). None when the config states a
    per-device batch only."""
    stage = cfg.stages[name]
    global_batch = stage.get("global_batch_size")
    if global_batch is None:
        return None
    import torch

    from grn.distributed.global_batch import split_global_batch, world_size

    if int(cfg.trainer.get("accumulate_grad_batches", 1) or 1) != 1:
        raise ConfigError(f"stages.{name}.global_batch_size derives the accumulation; remove "
                          "trainer.accumulate_grad_batches")
    world = world_size(cfg.trainer, torch.cuda.device_count())
    try:
        micro, accumulation = split_global_batch(global_batch, world, stage.datamodule.batch_size)
    except ValueError as err:
        raise ConfigError(f"stages.{name}.global_batch_size={global_batch}: {err}") from None
    log.info("stage %s: global batch %d = %d ranks x micro-batch %d x %d accumulation steps", name, global_batch,
             world, micro, accumulation)
    return {"batch_size": micro, "accumulate_grad_batches": accumulation}


def train_stage(cfg: DictConfig, name: str) -> Path | None:
    """Train one stage; returns its last checkpoint, or None if the job was pre-empted and requeued."""
    from grn.callbacks.requeue import SlurmRequeue
    from grn.distributed.resume import ExactResume
    from grn.entrypoints.loggers import build_loggers

    stage = cfg.stages[name]
    stage_dir = Path(cfg.paths.run_dir) / name
    ckpt_dir = stage_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    max_steps = int(stage.max_steps if cfg.get("max_steps") is None else min(stage.max_steps, cfg.max_steps))
    val_every = int(min(stage.get("val_every") or max_steps, max_steps))

    batching = stage_batching(cfg, name)
    datamodule_cfg = stage.datamodule
    if batching:
        datamodule_cfg = OmegaConf.merge(stage.datamodule, {"batch_size": batching["batch_size"]})
    resume_cb = ExactResume(seed=cfg.seed)
    datamodule = resume_cb.wrap(instantiate(datamodule_cfg))
    module = instantiate(stage.lit_module)
    callbacks = [resume_cb, *build_callbacks(cfg, name, ckpt_dir)]
    requeue = SlurmRequeue(last) if requeue_enabled(cfg) else None
    if requeue is not None:
        callbacks.append(requeue)
    # the logger instantiation point (W&B run ids are kept in the run directory)
    loggers = build_loggers(cfg, name, stage_dir)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        max_steps=max_steps,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(stage_dir),
        **({"accumulate_grad_batches": batching["accumulate_grad_batches"]} if batching else {}),
        **trainer_kwargs(cfg, module),
    )
    remove_stale_temp_files(ckpt_dir)  # a killed save's temporary file; nothing writes there yet
    resume = resume_path(cfg, ckpt_dir)
    if resume:
        log.info("stage %s: resuming from %s", name, resume)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    if requeue is not None and requeue.requeued:
        return None
    # The periodic callback saves every N steps only; the stage's final state is always written, so last.ckpt
    # is the trained result the next stage reads and a re-run resumes from. Under FSDP it is gathered into one
    # file (on CPU, shard by shard) so that later stages, sample.py and eval.py read it like any other.
    save_final_checkpoint(trainer, last)
    return last


def save_final_checkpoint(trainer: L.Trainer, path: Path) -> None:
    """The full training state in one file at ``path`` (sharded strategies consolidate it for this save)."""
    strategy = trainer.strategy
    sharded = getattr(strategy, "_save_distributed_checkpoint", False)
    if sharded:
        strategy._save_distributed_checkpoint = False
        # a sharded last.ckpt folder from the periodic saves is replaced; removed by one rank only (Lightning
        # would remove it on every rank at once, and the ranks race)
        if trainer.is_global_zero and path.is_dir():
            shutil.rmtree(path)
        strategy.barrier("grn_final_checkpoint")
    try:
        trainer.save_checkpoint(path, weights_only=False)  # the full state: optimisers, schedulers, loops
    finally:
        if sharded:
            strategy._save_distributed_checkpoint = True


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured stages (and the report, if asked); returns ``{stage: last checkpoint, ...}``."""
    names = validate(cfg)
    import lightning as L

    if cfg.get("trainer") is not None and cfg.trainer.get("precision") == "auto":
        with open_dict(cfg):  # resolved once, so every stage and the printed config show what runs
            cfg.trainer.precision = trainer_precision(cfg.trainer)

    if cfg.extras.get("ignore_warnings"):
        quiet_warnings()
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.extras.get("print_config"):
        from grn.entrypoints.console import print_config

        print_config(cfg, names)
    results: dict[str, Any] = {}
    for i, name in enumerate(names):
        from grn.entrypoints.console import stage_banner

        stage_banner(i + 1, len(names), name, run_dir / name)
        L.seed_everything(cfg.seed + i, workers=True, verbose=False)
        start = time.perf_counter()
        results[name] = train_stage(cfg, name)
        if results[name] is None:
            log.warning("stage %s was pre-empted: checkpointed and requeued; stopping this process", name)
            results["requeued"] = True
            return results
        results[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
    if cfg.get("report"):
        from grn.entrypoints.console import stage_banner
        from grn.entrypoints.eval import report

        stage_banner(len(names) + 1, len(names) + 1, "report", run_dir)
        results["metrics"] = report(cfg, results["c2i"], run_dir, train_seconds=results)
    return results


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@cli_errors
def main(cfg: DictConfig) -> None:
    with open_dict(cfg):
        cfg.paths.run_dir = str(Path(cfg.paths.run_dir).resolve())
    OmegaConf.resolve(cfg)
    run(cfg)


if __name__ == "__main__":
    main()
