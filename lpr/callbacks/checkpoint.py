"""When to save (Lightning's ModelCheckpoint) and what every checkpoint carries (``checkpoint["lpr"]``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import lightning as L
import torch
import torchvision
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint

import lpr
from lpr.models.module import plain


def infer_mode(key: str) -> str:
    """``"min"`` for losses, ``"max"`` for everything else (mAP, EIR, precision...)."""
    return "min" if "loss" in key else "max"


def key_slug(key: str) -> str:
    """A metric key as a file-name part: ``val/dv_mAP`` -> ``val_dv_mAP``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


class KeywordCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that records why a file is the best: ``checkpoint["lpr"]["monitor"]``.

    Saving policy is Lightning's; this adds ``{"key", "value", "mode"}`` to the checkpoint
    written as a new best for ``monitor``, and lets a validation round pass without the key
    (a round skipped by MemoryGuard logs no metrics) instead of failing the run.

    Lightning offers no public hook for either, so two of ``ModelCheckpoint``'s own methods are
    overridden: ``_save_topk_checkpoint`` (return early without the key) and ``_save_checkpoint``
    (know that the file being written is a new best). ``tests/test_guards.py`` pins both
    behaviours, so a Lightning upgrade that changes them fails there.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._saving_best = False

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self.monitor is not None and self.monitor not in monitor_candidates:
            return  # no value this round: nothing to compare, no best from partial data
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self._saving_best = self.monitor is not None and filepath in self.best_k_models
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            self._saving_best = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self._saving_best:
            value = self.current_score
            checkpoint.setdefault("lpr", {})["monitor"] = {
                "key": self.monitor,
                "value": float(value) if value is not None else None,
                "mode": self.mode,
            }


class EpochListCheckpoint(ModelCheckpoint):
    """Keeps a checkpoint at the end of each epoch in ``keep_epochs``; both the list and the
    ``{epoch}`` of its filename count from 1 (``keep_epochs=[12]`` -> ``keep-epoch012.ckpt``)."""

    def __init__(self, keep_epochs: Sequence[int], **kwargs: Any) -> None:
        if any(int(e) < 1 for e in keep_epochs):
            raise ValueError(f"keep_epochs are 1-based epoch numbers, got {list(keep_epochs)}")
        super().__init__(monitor=None, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True, **kwargs)
        self.keep_epochs = sorted({int(e) for e in keep_epochs})

    @property
    def state_key(self) -> str:
        return self._generate_state_key(keep_epochs=self.keep_epochs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 in self.keep_epochs:
            super().on_train_epoch_end(trainer, pl_module)

    def format_checkpoint_name(self, metrics: dict, filename: str | None = None, ver: int | None = None, **kw):
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, **kw)


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Writes ``last.ckpt`` when training is interrupted (Ctrl-C, SIGTERM, an error).

    Lightning's ``OnExceptionCheckpoint`` deletes its file at a normal ``teardown``; here the file
    is ``last.ckpt``, kept up to date by the last-checkpoint callback, so it must stay.
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__(dirpath=dirpath, filename="last")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pass


def checkpoint_callbacks(
    *,
    dirpath: str,
    on_exception: bool = True,
    monitor: str | Sequence[str] | None = None,
    mode: str | Sequence[str] | None = None,
    best_filename: str = "best-{key}",
    save_last: bool = True,
    last_every_n_train_steps: int | None = None,
    every_n_epochs: int | None = None,
    every_n_train_steps: int | None = None,
    periodic_filename: str = "epoch{epoch:03d}-step{step:06d}",
    keep_epochs: Sequence[int] = (),
) -> list[Callback]:
    """The checkpoint policy as Lightning callbacks.

    Args:
        dirpath: folder for every checkpoint file.
        monitor: one logged key or a list; each gets its own best file.
        mode: ``"min"``/``"max"`` (one for all keys or one per key); ``None`` infers
            it per key: keys containing ``loss`` are minimised, others maximised.
        best_filename: Lightning filename template of a best file; ``{key}`` is
            replaced by the key made file-safe (``val/EIR`` -> ``val_EIR``).
        on_exception: write ``last.ckpt`` when training is interrupted (Ctrl-C, SIGTERM, an
            error), so a kill never loses finished steps.
        save_last: keep ``last.ckpt`` (written at each epoch end and validation).
        last_every_n_train_steps: also refresh ``last.ckpt`` every N steps.
        every_n_epochs: keep a periodic checkpoint every N epochs.
        every_n_train_steps: keep a periodic checkpoint every N training steps.
        periodic_filename: filename template of periodic checkpoints.
        keep_epochs: explicit 1-based epochs whose end-of-epoch checkpoint is kept.

    Raises:
        ValueError: an unknown mode, or a mode list whose length differs from the keys'.
    """
    keys = [monitor] if isinstance(monitor, str) else list(monitor or [])
    modes = [mode] * len(keys) if mode is None or isinstance(mode, str) else list(mode)
    if len(modes) != len(keys):
        raise ValueError(f"checkpoint.mode has {len(modes)} entries for {len(keys)} monitor keys {keys}")
    for m in modes:
        if m not in (None, "min", "max"):
            raise ValueError(f"checkpoint.mode must be 'min', 'max' or null, got {m!r}")

    callbacks: list[Callback] = [
        KeywordCheckpoint(
            dirpath=dirpath,
            filename=best_filename.replace("{key}", key_slug(key)),
            monitor=key,
            mode=m or infer_mode(key),
            save_top_k=1,
            auto_insert_metric_name=False,
        )
        for key, m in zip(keys, modes, strict=True)
    ]
    if save_last:
        callbacks.append(
            # no version counter: after a resume (or an on-exception save) last.ckpt is overwritten, not
            # joined by last-v1.ckpt
            ModelCheckpoint(
                dirpath=dirpath,
                save_last=True,
                save_top_k=0,
                every_n_train_steps=last_every_n_train_steps,
                enable_version_counter=False,
            )
        )
    if every_n_epochs or every_n_train_steps:
        callbacks.append(
            ModelCheckpoint(
                dirpath=dirpath,
                filename=periodic_filename,
                save_top_k=-1,
                every_n_epochs=every_n_epochs,
                every_n_train_steps=every_n_train_steps,
                auto_insert_metric_name=False,
            )
        )
    if on_exception:
        callbacks.append(InterruptCheckpoint(dirpath))
    if keep_epochs:
        callbacks.append(
            EpochListCheckpoint(
                keep_epochs, dirpath=dirpath, filename="keep-epoch{epoch:03d}", auto_insert_metric_name=False
            )
        )
    return callbacks


def versions() -> dict[str, str]:
    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {
        "lpr": str(lpr.__version__),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "lightning": str(L.__version__),
    }


class CheckpointMetadata(Callback):
    """Makes every checkpoint self-describing: ``checkpoint["lpr"]``.

    Adds ``classes`` (from the module), the resolved run ``config`` (a plain dict),
    library ``versions``, the creation time, and ``monitor`` (``None`` unless a
    :class:`KeywordCheckpoint` saved it as a best file).

    Args:
        config: the resolved run configuration as plain data.
    """

    def __init__(self, config: dict | None = None) -> None:
        self.config = plain(config) or {}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        meta = checkpoint.setdefault("lpr", {})
        meta.update(
            classes=list(pl_module.hparams["classes"]),
            config=self.config,
            versions=versions(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        meta.setdefault("monitor", None)
