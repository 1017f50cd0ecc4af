"""Training: ``python -m lpr.train +experiment=plate`` (Hydra), or ``train(cfg)`` from Python."""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from lpr.callbacks.checkpoint import CheckpointMetadata
from lpr.callbacks.consistency import ConsistencyError
from lpr.checkpoint import AtomicCheckpointIO, CheckpointError, module_of, read_checkpoint
from lpr.config_check import (
    ConfigError,
    RunFolderInUse,
    check_output_dir,
    claim_run_folder,
    clear_errors,
    instantiate_checked,
    validate_train_config,
)
from lpr.data.validate import ClassMismatchError, DataValidationError
from lpr.hardware import cpu_precision, enlarge_onednn_cache
from lpr.models.module import MaskRCNNModule
from lpr.models.transfer import transfer_weights
from lpr.outputs import OutputError, make_dir, write_text
from lpr.sweep import best_values, optimization_direction, write_job_summary

log = logging.getLogger("lpr.train")
# MaskRCNNModule.on_before_batch_transfer only drops batches MemoryGuard asked to skip; the data
# module's transfer hooks are not replaced, so Lightning's notice about overriding them is noise.
warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer`")
# ${lpr.direction:val/EIR} -> "maximize": lets sweep configs derive the direction from the watched key.
OmegaConf.register_new_resolver("lpr.direction", optimization_direction, replace=True)
# ${lpr.cpu_precision:} -> "bf16-mixed" on CPUs with native bf16, else "32-true" (lpr/hardware.py).
OmegaConf.register_new_resolver("lpr.cpu_precision", cpu_precision, replace=True)


def _instantiate_all(cfg: DictConfig | None) -> list[Any]:
    """One ``_target_`` config, or a dict of named ones (Hydra-template style), as a list of objects."""
    if not cfg:
        return []
    if "_target_" in cfg:
        obj = instantiate_checked(cfg, _convert_="all")
        return obj if isinstance(obj, list) else [obj]
    return [o for c in cfg.values() if c for o in _instantiate_all(c)]


def _resolve_ckpt_path(cfg: DictConfig) -> str | None:
    if cfg.get("ckpt_path") in (None, ""):
        return None
    if cfg.ckpt_path == "last":
        path = Path(cfg.checkpoint.dirpath) / "last.ckpt"
        if not path.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last but {path} does not exist: set paths.output_dir to the run to resume "
                "or give the checkpoint file itself"
            )
        return str(path)
    return str(cfg.ckpt_path)


class TrainingInterrupted(Exception):
    """Training was stopped by a signal (``SIGINT``: Ctrl-C, or ``SIGTERM``) after ``last.ckpt`` was
    written; ``exit_code`` is what shells report for it (130, 143) and ``objects`` as :func:`train`'s."""

    def __init__(self, signal_name: str, objects: dict[str, Any]) -> None:
        super().__init__(f"training stopped by {signal_name}")
        self.signal_name, self.objects = signal_name, objects
        self.exit_code = 128 + int(getattr(signal, signal_name))


def build_module(cfg: DictConfig, classes: list[str], ckpt_path: str | None) -> MaskRCNNModule:
    """The LightningModule: from the checkpoint's own hyperparameters on resume, else from ``cfg.model``."""
    if ckpt_path:
        ckpt = read_checkpoint(ckpt_path)
        trained_on = ckpt["hyper_parameters"]["classes"]
        if list(trained_on) != list(classes):
            raise ValueError(
                f"cannot resume {ckpt_path}: it was trained on classes {trained_on} but the data set "
                f"has {classes}. To train on a new class list, start a new run with init_from={ckpt_path}"
            )
        log.info("Resuming %s with the model config stored in it", ckpt_path)
        return module_of(ckpt, ckpt_path)
    module = instantiate_checked(cfg.model, classes=classes, _recursive_=False)
    if cfg.get("init_from"):
        src = read_checkpoint(cfg.init_from)
        report = transfer_weights(src["state_dict"], src["lpr"]["classes"], module, classes)
        log.info(
            "init_from %s: carried over %d classes %s; new (initialised) %s; not in this data set %s",
            cfg.init_from,
            len(report["carried"]),
            report["carried"],
            report["new"],
            report["dropped"],
        )
        if report["skipped"]:
            log.info("init_from: %d tensors not copied (shape or name differs)", len(report["skipped"]))
    return module


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit a model as ``cfg`` says; returns the final metrics and the objects built.

    ``ckpt_path`` resumes (the model comes from the checkpoint's own config), ``init_from``
    fine-tunes onto the current data set's classes.

    Returns:
        ``(metrics, objects)``: ``trainer.callback_metrics`` as floats, and
        ``{"cfg", "datamodule", "model", "trainer", "callbacks"}``.
    """
    validate_train_config(cfg)
    enlarge_onednn_cache()
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    check_output_dir(output_dir, resuming=cfg.get("ckpt_path") not in (None, ""))
    plain_cfg = OmegaConf.to_container(cfg, resolve=True)

    ckpt_path = _resolve_ckpt_path(cfg)
    # resuming: the data set's categories are matched to the checkpoint's classes by name
    resumed_classes = read_checkpoint(ckpt_path)["hyper_parameters"]["classes"] if ckpt_path else None
    datamodule = instantiate_checked(cfg.data, _convert_="all", classes=resumed_classes)
    datamodule.prepare_data()
    try:
        datamodule.setup("fit")  # validates the data set now, before any model is built
    except ClassMismatchError as e:
        if not ckpt_path:
            raise
        raise ClassMismatchError(
            f"cannot resume {ckpt_path}: {e}. To train on a new class list, start a new run with init_from={ckpt_path}"
        ) from None
    classes = datamodule.classes
    module = build_module(cfg, classes, ckpt_path)

    callbacks: list[Callback] = _instantiate_all(cfg.get("callbacks"))
    callbacks += _instantiate_all(cfg.get("checkpoint"))
    callbacks.append(CheckpointMetadata(plain_cfg))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer_cfg = cfg.trainer.copy()
    if trainer_cfg.get("enable_progress_bar") is None:  # a bar for people, not for log files
        with open_dict(trainer_cfg):
            trainer_cfg.enable_progress_bar = sys.stderr.isatty()
    trainer: L.Trainer = instantiate_checked(
        trainer_cfg, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )

    # only now, with every input checked, is anything written to the run folder
    make_dir(output_dir)
    claim_run_folder(output_dir)  # held until exit: a run that passed the check above alongside this one stops here
    write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    log.info("Output: %s", output_dir)
    for lg in loggers:
        log.info("Logs (%s): %s", type(lg).__name__, lg.log_dir)
    log.info("Checkpoints: %s", cfg.checkpoint.dirpath)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": module, "trainer": trainer, "callbacks": callbacks}
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit as e:  # Lightning's answer to Ctrl-C (exit 1) and SIGTERM, after last.ckpt was written
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        signame = "SIGTERM" if trainer.received_sigterm else "SIGINT"
        raise TrainingInterrupted(signame, objects) from e
    if cfg.get("final_full_validation") and _validates_a_subset(trainer.limit_val_batches) and not trainer.interrupted:
        # Rounds during training use a fixed subset (trainer.limit_val_batches); the last one sees it all.
        log.info("Final validation on the full validation split")
        trainer.limit_val_batches = 1.0
        trainer.validate(module, datamodule=datamodule, verbose=False)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return metrics, objects


def _validates_a_subset(limit: int | float) -> bool:
    """Whether Lightning's ``limit_val_batches`` validates part of the split: a share in (0, 1) or a
    count of batches (an int; 1 is one batch, 1.0 all of them), not 0 (no validation)."""
    return 0.0 < limit < 1.0 if isinstance(limit, float) else limit > 0


def optimized_value(cfg: DictConfig, metrics: dict[str, float], best: dict[str, dict]) -> float | None:
    """What a sweeper optimises: the best value of the first watched key (else its last value)."""
    monitor = cfg.checkpoint.get("monitor")
    key = monitor if isinstance(monitor, str) else (monitor[0] if monitor else None)
    if key is None:
        return None
    value = best.get(key, {}).get("value")
    return value if value is not None else metrics.get(key)


_task_started = False


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@clear_errors(ConfigError, DataValidationError, CheckpointError, ConsistencyError, FileNotFoundError, OutputError)
def main(cfg: DictConfig) -> float | None:
    global _task_started
    _task_started = True
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    try:
        metrics, objects = train(cfg)
    except TrainingInterrupted as e:
        best = best_values(e.objects["callbacks"])
        write_job_summary(cfg.paths.output_dir, overrides=overrides, status="interrupted", best=best, error=str(e))
        log.warning("%s; resume with ckpt_path=last paths.output_dir=%s", e, cfg.paths.output_dir)
        sys.exit(e.exit_code)
    except Exception as e:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        # In a sweep a failed job is recorded (in its own folder, not in another run's) and the others go on.
        log.exception("job failed: %s", " ".join(overrides))
        if not isinstance(e, RunFolderInUse):
            write_job_summary(cfg.paths.output_dir, overrides=overrides, status="failed", error=repr(e))
        return float("nan")
    best = best_values(objects["callbacks"])
    write_job_summary(cfg.paths.output_dir, overrides=overrides, status="completed", best=best)
    return optimized_value(cfg, metrics, best)


def cli() -> None:
    """``python -m lpr.train`` / ``lpr-train``: Hydra's own config errors (unknown key, bad override)
    exit with 2 like lpr's, so scripts can tell bad input from a crash."""
    try:
        main()
    except SystemExit as e:
        if e.code == 1 and not _task_started:
            sys.exit(2)
        raise


if __name__ == "__main__":
    cli()
