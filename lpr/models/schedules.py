"""Learning-rate schedules: a linear warm-up, then a decay, stepped every optimizer step.

Each schedule's ``lr_lambda`` exposes ``total_steps``, the step its decay is laid out to end at;
:class:`lpr.callbacks.budget.TimeBudget` moves it while training to end the decay on time.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class _WarmupThen:
    """``lr_lambda`` for LambdaLR: linear warm-up from ``warmup_factor`` to 1, then ``decay``.

    A class rather than a closure so the scheduler's ``state_dict`` holds plain numbers.
    """

    def __init__(self, warmup_steps: int, warmup_factor: float) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 < warmup_factor <= 1.0:
            raise ValueError(f"warmup_factor must be in (0, 1], got {warmup_factor}")
        self.warmup_steps = warmup_steps
        self.warmup_factor = warmup_factor

    def decay(self, step: int) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
        return self.decay(step)


class _Cosine(_WarmupThen):
    def __init__(self, warmup_steps: int, warmup_factor: float, total_steps: int, min_lr_ratio: float) -> None:
        super().__init__(warmup_steps, warmup_factor)
        self.total_steps = max(total_steps, warmup_steps + 1)
        self.min_lr_ratio = min_lr_ratio

    def decay(self, step: int) -> float:
        t = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine(
    optimizer: Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 150,
    warmup_factor: float = 0.001,
    min_lr_ratio: float = 0.01,
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at ``total_steps``."""
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return LambdaLR(optimizer, _Cosine(warmup_steps, warmup_factor, int(total_steps), min_lr_ratio))
