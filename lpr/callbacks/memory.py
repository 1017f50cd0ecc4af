"""MemoryGuard: watch RAM and GPU memory; warn, skip work, or save and stop cleanly."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import lightning as L
import psutil
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger("lpr.memory")


@runtime_checkable
class SkipsWork(Protocol):
    """What :class:`MemoryGuard` asks of a LightningModule to skip work (``MaskRCNNModule`` offers it);
    with any other module it warns and stops, but does not skip."""

    validation_round_skipped: bool  # the rest of this validation round is being ignored

    def skip_training_batch(self) -> None:
        """Skip the next training batch: no forward, backward or optimizer step."""

    def skip_validation_round(self) -> None:
        """Ignore the rest of this validation round: its metrics are not logged."""


@dataclass(frozen=True)
class MemoryReading:
    """One look at memory: system RAM percent, this process tree's memory in GB (PSS, workers
    included), GPU percent (None: no GPU)."""

    ram_percent: float
    rss_gb: float
    gpu_percent: float | None = None

    @property
    def worst_percent(self) -> float:
        return max(self.ram_percent, self.gpu_percent or 0.0)

    def __str__(self) -> str:
        gpu = f"{self.gpu_percent:.0f}%" if self.gpu_percent is not None else "-"
        return f"RAM {self.ram_percent:.0f}% (this run {self.rss_gb:.2f} GB), GPU {gpu}"


def process_tree_gb() -> float:
    """Memory of this process and its children (DataLoader workers) in GB, as PSS where the OS
    gives it: pages shared after fork count once in total, not once per worker as RSS would."""
    total = 0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker may exit meanwhile
            info = proc.memory_full_info()
            total += getattr(info, "pss", info.rss)
    return total / 2**30


class SystemMemoryReader:
    """Reads RAM with psutil and GPU memory with NVML (``nvidia-ml-py``); no NVML is normal."""

    def __init__(self) -> None:
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as e:  # no driver, no library, no device: all mean "no GPU to watch"
            log.info("GPU memory not watched (NVML unavailable: %s)", e.__class__.__name__)

    def __call__(self) -> MemoryReading:
        gpu = None
        if self._nvml is not None and self._handles:
            infos = [self._nvml.nvmlDeviceGetMemoryInfo(h) for h in self._handles]
            gpu = max(100.0 * i.used / i.total for i in infos)
        return MemoryReading(psutil.virtual_memory().percent, process_tree_gb(), gpu)


class MemoryGuard(Callback):
    """Watches memory every N training steps / validation batches and acts on thresholds.

    Above ``warn_percent``: a warning line. Above ``skip_percent``: the training
    batch is skipped (no backward, no optimizer step; counted in
    ``mem/skipped_batches``), or the rest of the validation round is skipped and
    its metrics are not logged (so no best checkpoint comes from partial data).
    Above ``stop_percent``: ``memory-stop.ckpt`` is saved next to the other
    checkpoints and training stops cleanly. Decisions are reduced across DDP
    ranks (any rank over a threshold decides for all), so ranks never diverge.

    Args:
        every_n_steps: read memory every N training steps.
        every_n_val_batches: read memory every N validation batches.
        warn_percent: warning threshold (percent of RAM or GPU memory, the worse).
        skip_percent: skip threshold.
        stop_percent: stop threshold.
        reader: a callable returning a :class:`MemoryReading`; default
            :class:`SystemMemoryReader` (tests inject fake readings).
        stop_filename: checkpoint written before stopping.

    Raises:
        ValueError: unless ``0 < warn_percent <= skip_percent < stop_percent <= 100`` and intervals >= 1.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        every_n_val_batches: int = 10,
        warn_percent: float = 85.0,
        skip_percent: float = 92.0,
        stop_percent: float = 97.0,
        reader: Callable[[], MemoryReading] | None = None,
        stop_filename: str = "memory-stop.ckpt",
    ) -> None:
        if every_n_steps < 1 or every_n_val_batches < 1:
            raise ValueError(f"intervals must be >= 1, got {every_n_steps} and {every_n_val_batches}")
        if not 0 < warn_percent <= skip_percent < stop_percent <= 100:
            raise ValueError(
                "need 0 < warn_percent <= skip_percent < stop_percent <= 100, got "
                f"{warn_percent}, {skip_percent}, {stop_percent}"
            )
        self.every_n_steps, self.every_n_val_batches = every_n_steps, every_n_val_batches
        self.warn_percent, self.skip_percent, self.stop_percent = warn_percent, skip_percent, stop_percent
        self.reader = reader
        self.stop_filename = stop_filename
        self.skipped_batches = 0
        self.stop_reading: MemoryReading | None = None
        self._can_skip = True

    LOGGED_KEYS = ("mem/ram_percent", "mem/rss_gb", "mem/gpu_percent", "mem/skipped_batches")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.reader is None:
            self.reader = SystemMemoryReader()
        self._can_skip = isinstance(pl_module, SkipsWork)
        if not self._can_skip:
            log.warning("%s cannot skip work (lpr.callbacks.memory.SkipsWork): memory will warn and stop only",
                        type(pl_module).__name__)  # fmt: skip

    def _decide(self, trainer: L.Trainer, reading: MemoryReading, threshold: float) -> bool:
        return trainer.strategy.reduce_boolean_decision(reading.worst_percent > threshold, all=False)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, where: str) -> str | None:
        """Read, log, warn; returns ``"stop"``, ``"skip"`` or None."""
        reading = self.reader()
        # batch_size=1: readings, not per-image values; over a validation round each counts once
        pl_module.log("mem/ram_percent", reading.ram_percent, batch_size=1)
        pl_module.log("mem/rss_gb", reading.rss_gb, batch_size=1)
        if reading.gpu_percent is not None:
            pl_module.log("mem/gpu_percent", reading.gpu_percent, batch_size=1)
        if self._decide(trainer, reading, self.stop_percent):
            self.stop_reading = reading
            return "stop"
        if self._decide(trainer, reading, self.skip_percent):
            log.warning("memory above skip_percent=%s%% (%s): skipping the %s", self.skip_percent, reading, where)
            return "skip"
        if reading.worst_percent > self.warn_percent:
            log.warning("memory above warn_percent=%s%%: %s", self.warn_percent, reading)
        return None

    def _stop(self, trainer: L.Trainer) -> None:
        dirpath = (
            Path(trainer.checkpoint_callback.dirpath) if trainer.checkpoint_callback else Path(trainer.default_root_dir)
        )
        path = dirpath / self.stop_filename
        trainer.save_checkpoint(path)
        trainer.should_stop = True
        log.error(
            "memory above stop_percent=%s%% (%s): saved %s and stopped training. Resume with ckpt_path=%s "
            "after lowering data.batch_size or data.num_workers.",
            self.stop_percent,
            self.stop_reading,
            path,
            path,
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        # Read after a step (its peak is still resident): the decision applies to the next batch.
        if trainer.global_step % self.every_n_steps:
            return
        action = self._check(trainer, pl_module, "next training batch")
        if action == "stop":
            self._stop(trainer)
        elif action == "skip" and self._can_skip:
            self.skipped_batches += 1
            pl_module.skip_training_batch()
            pl_module.log("mem/skipped_batches", float(self.skipped_batches), batch_size=1)

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if trainer.sanity_checking or batch_idx % self.every_n_val_batches:
            return
        if self._can_skip and pl_module.validation_round_skipped:
            return
        action = self._check(trainer, pl_module, "rest of this validation round (its metrics will not be logged)")
        if action is not None and self._can_skip:
            pl_module.skip_validation_round()
        if action == "stop" and trainer.state.fn == TrainerFn.FITTING:
            self._stop(trainer)

    def state_dict(self) -> dict:
        return {"skipped_batches": self.skipped_batches}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_batches = state_dict.get("skipped_batches", 0)
