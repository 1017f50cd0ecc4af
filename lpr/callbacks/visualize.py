"""A few fixed validation images with predictions and plate text, in TensorBoard at every validation."""

from __future__ import annotations

import cv2
import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from lpr.draw import draw_result
from lpr.results import detections_to_result


class ValidationImages(Callback):
    """Draws the predictions on the first ``num_images`` validation images (the same ones each
    round, the loader is not shuffled) and logs them as ``val_images/<i>`` to TensorBoard.

    Args:
        num_images: how many images to show.
        score_thr: detections drawn and read from this score.

    Raises:
        ValueError: if ``num_images < 1``.
    """

    def __init__(self, num_images: int = 4, score_thr: float = 0.5) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.num_images = num_images
        self.score_thr = score_thr
        self._seen = 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen = 0

    def _tensorboard(self, trainer: L.Trainer):
        return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    @rank_zero_only
    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        writer = self._tensorboard(trainer)
        if trainer.sanity_checking or writer is None or outputs is None or self._seen >= self.num_images:
            return
        images, _ = batch
        reading = getattr(pl_module, "val_eir", None)
        reading = reading.reading if reading is not None else {}
        for image, output in zip(images, outputs, strict=True):
            if self._seen >= self.num_images:
                break
            rgb = (image.detach().cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            result = detections_to_result(
                output, pl_module.classes, image=str(self._seen), width=rgb.shape[1], height=rgb.shape[0],
                score_thr=self.score_thr, reading=reading,
            )  # fmt: skip
            drawn = draw_result(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), result)
            writer.add_image(
                f"val_images/{self._seen}", cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB), trainer.global_step,
                dataformats="HWC",
            )  # fmt: skip
            self._seen += 1
