"""A log line every N steps: losses, lr, speed, memory and the ETA of the whole run."""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import psutil
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from lpr.callbacks.memory import process_tree_gb

log = logging.getLogger("lpr.progress")


def format_eta(seconds: float) -> str:
    """``93784`` -> ``"1d 02h 03m 04s"``; negatives clamp to 0, non-finite values give ``"?"``."""
    if not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours:02d}h {minutes:02d}m {secs:02d}s"


def _memory() -> str:
    text = f"RAM {psutil.virtual_memory().percent:.0f}% mem {process_tree_gb():.1f}G"
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        text += f" | GPU {100 * (total - free) / total:.0f}%"
    else:
        text += " | GPU -/-"
    return text


class StepClock:
    """Wall time of each training step, the wait for its batch included, validation left out.

    Call :meth:`resume` when training (re)starts after something else (an epoch start, a
    validation round), :meth:`start` when a batch arrives and :meth:`stop` when its step ends.
    """

    def __init__(self) -> None:
        self._resumed: float | None = None  # when the wait for the next batch began
        self._started: float | None = None
        self.data_seconds: float | None = None  # the last batch's wait

    def resume(self) -> None:
        self._resumed = time.perf_counter()

    def start(self) -> None:
        self._started = time.perf_counter()
        self.data_seconds = None if self._resumed is None else self._started - self._resumed

    def stop(self) -> float | None:
        """Seconds of the step just ended, its batch's wait included; ``None`` before any start."""
        now = time.perf_counter()
        seconds = None if self._started is None else now - self._started + (self.data_seconds or 0.0)
        self._resumed = now
        return seconds


class ProgressLog(Callback):
    """Every ``every_n_steps`` optimizer steps, one line like::

        epoch 1/24 step 120/3600 | loss 1.234 loss_classifier 0.3 ... | lr 1.0e-03 |
        0.42 s/it (data 0.01) | RAM 41% mem 2.1G | GPU -/- | ETA 0d 01h 23m 45s

    The ETA covers the rest of training plus the validations still to come,
    timed from this process (so it is right after a resume too). Also logs
    ``train/minutes``, the training time so far without validation, kept across resumes.

    Args:
        every_n_steps: log interval in optimizer steps.

    Raises:
        ValueError: if ``every_n_steps < 1``.
    """

    LOGGED_KEYS = ("train/minutes",)

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._clock = StepClock()
        self._step_times: list[float] = []
        self._data_times: list[float] = []
        self._train_seconds = 0.0
        self._train_steps = 0
        self._val_start = 0.0
        self._val_seconds: float | None = None
        self.train_minutes = 0.0  # training wall time of the whole run, validation excluded

    def state_dict(self) -> dict:
        return {"train_minutes": self.train_minutes}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_minutes = state_dict.get("train_minutes", 0.0)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._clock.resume()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._clock.start()
        if self._clock.data_seconds is not None:
            self._data_times.append(self._clock.data_seconds)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if batch is None:  # a batch skipped (MemoryGuard): nothing was trained
            return
        step_time = self._clock.stop()
        if step_time is not None:
            self._step_times.append(step_time)
            if self._train_steps > 0:  # the first step pays for warm-up: keep it out of the rate
                self._train_seconds += step_time
            self._train_steps += 1
            self.train_minutes += step_time / 60.0
        # x axis of learning curves: minutes of training, not of training + validation
        pl_module.log("train/minutes", self.train_minutes, batch_size=1)
        if trainer.global_step % self.every_n_steps == 0 or trainer.global_step == trainer.max_steps:
            self._log_line(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_seconds = time.perf_counter() - self._val_start
        self._clock.resume()  # validation time is not data time

    def eta_seconds(self, trainer: L.Trainer) -> float:
        """Seconds left: remaining steps at the measured rate plus the remaining validations."""
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or self._train_steps < 2:
            return math.nan
        remaining = max(0, int(total) - trainer.global_step)
        seconds = remaining * self._train_seconds / (self._train_steps - 1)
        if self._val_seconds is not None and trainer.num_training_batches:
            every = trainer.val_check_batch if isinstance(trainer.val_check_batch, int) else 0
            every *= trainer.check_val_every_n_epoch or 1
            if every:
                seconds += (remaining // every) * self._val_seconds
        return seconds

    @rank_zero_only
    def _log_line(self, trainer: L.Trainer) -> None:
        metrics = trainer.callback_metrics
        losses = " ".join(
            f"{k.split('/', 1)[1]} {float(v):.4f}" for k, v in metrics.items() if k.startswith("train/loss")
        )
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        step_time = sum(self._step_times) / max(1, len(self._step_times))
        data_time = sum(self._data_times) / max(1, len(self._data_times))
        self._step_times.clear()
        self._data_times.clear()
        total = trainer.estimated_stepping_batches
        total_text = str(int(total)) if math.isfinite(total) else "?"
        max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        log.info(
            "epoch %d/%s step %d/%s | %s | lr %.2e | %.2f s/it (data %.2f) | %s | ETA %s",
            trainer.current_epoch + 1,
            max_epochs,
            trainer.global_step,
            total_text,
            losses,
            lr,
            step_time,
            data_time,
            _memory(),
            format_eta(self.eta_seconds(trainer)),
        )
