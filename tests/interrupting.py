"""A callback the interrupt tests hand to a training subprocess (``+callbacks.x._target_=interrupting...``,
with this folder on its ``PYTHONPATH``): it presses Ctrl-C at an exact point of training."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class CtrlCInValidation(Callback):
    """Sends this process SIGINT after the first validation batch, while the round's metrics hold records."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        os.kill(os.getpid(), signal.SIGINT)
