"""Train for minutes rather than steps, with the learning-rate schedule ending when the time does."""

from __future__ import annotations

import logging
import math
from collections import deque

import lightning as L
from lightning.pytorch.callbacks import Callback

from lpr.callbacks.progress import StepClock

log = logging.getLogger("lpr.budget")


class TimeBudget(Callback):
    """Train for ``minutes``, the lr schedule laid out over the steps that fit in them.

    Minutes count as ``train/minutes`` does (:class:`~lpr.callbacks.progress.ProgressLog`):
    step time with the wait for data, without validation. A fixed step count cannot
    promise a time: steps slow down as the proposals improve (more work for the
    heads), and one 2-core CPU ran the plate recipe's steps 1.5x faster than another
    (docs/recipe.md). So every
    ``every_n_steps`` steps this projects how many steps fit in what is left of the
    budget, at the mean time of the last ``window`` steps, and moves the trainer's
    ``max_steps`` and the schedule's ``total_steps`` (:mod:`lpr.models.schedules`)
    there: the cosine decay ends as the budget does, and training stops when
    another step would not fit. The trainer's own ``max_steps`` / ``max_epochs``
    stay upper bounds.

    ``max_steps`` is moved on ``trainer.fit_loop.epoch_loop`` (Lightning's loops API; the
    trainer's own ``max_steps`` has no setter), so that the progress line's step count and
    ETA follow the budget too; the stop itself is Lightning's, at ``max_steps``.

    The number of steps, hence the weights, then depend on the machine's speed;
    leave the budget out (``callbacks.time_budget=null``) for a run that repeats
    bit for bit. Under DDP rank 0's projection is broadcast, so all ranks stop together.

    Args:
        minutes: the training time to spend.
        window: steps in the moving mean of the step time.
        every_n_steps: how often to re-project.

    Raises:
        ValueError: on non-positive arguments; at the start of training, if a
            learning-rate schedule has no ``total_steps`` to move.
    """

    def __init__(self, minutes: float, window: int = 50, every_n_steps: int = 10) -> None:
        if not minutes > 0 or window < 1 or every_n_steps < 1:
            raise ValueError(
                f"TimeBudget needs minutes > 0, window >= 1 and every_n_steps >= 1, "
                f"got {minutes}, {window}, {every_n_steps}"
            )
        self.seconds = 60.0 * minutes
        self.every_n_steps = every_n_steps
        self.spent = 0.0  # seconds of training so far, across resumes
        self._clock = StepClock()
        self._recent: deque[float] = deque(maxlen=window)
        self._warm = False
        self._cap = math.inf
        self._schedules: list = []

    def state_dict(self) -> dict:
        return {"spent": self.spent}

    def load_state_dict(self, state_dict: dict) -> None:
        self.spent = state_dict.get("spent", 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cap = trainer.estimated_stepping_batches  # max_steps / max_epochs as configured
        self._schedules = []
        for config in trainer.lr_scheduler_configs:
            lambdas = getattr(config.scheduler, "lr_lambdas", [])
            if not lambdas or not all(hasattr(fn, "total_steps") for fn in lambdas):
                raise ValueError(
                    f"TimeBudget fits the lr schedule to the time by moving its total_steps; "
                    f"{type(config.scheduler).__name__} has none (use lpr.models.schedules, or no budget)"
                )
            self._schedules += lambdas

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._clock.resume()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._clock.resume()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._clock.start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if batch is None:  # a batch skipped (MemoryGuard): nothing was trained
            return
        seconds = self._clock.stop()
        if seconds is not None:
            self.spent += seconds
            if self._warm:  # the first step of a process pays for warm-up: keep it out of the rate
                self._recent.append(seconds)
            self._warm = True
        step = trainer.global_step
        if step % self.every_n_steps and self.spent < self.seconds:
            return
        total = trainer.strategy.broadcast(self._projected_total(step), src=0)
        trainer.fit_loop.epoch_loop.max_steps = total
        for schedule in self._schedules:
            schedule.total_steps = max(total, schedule.warmup_steps + 1)
        if total <= step:
            log.info("Time budget of %.1f minutes spent at step %d", self.seconds / 60, step)

    def _projected_total(self, step: int) -> int:
        """The step at which the budget runs out, at the recent step time (at most the trainer's cap)."""
        left = self.seconds - self.spent
        if left <= 0 or not self._recent:
            return step if left <= 0 else int(min(self._cap, 2**31 - 1))
        total = step + int(left / (sum(self._recent) / len(self._recent)))
        return int(min(total, self._cap))
