"""PlateReader: the Python API for reading plates with a trained checkpoint (or its ONNX export).

from lpr import PlateReader
reader = PlateReader.from_checkpoint("best-val_EIR.ckpt")   # or PlateReader.from_onnx("model.onnx")
result = reader("car.jpg")            # or a numpy image (BGR by default)
print(result["plates"])               # [{"type", "text", "sub", "main", "box", "score"}]
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lpr.checkpoint import load
from lpr.onnx_reader import OnnxPlateReader
from lpr.results import ReaderBase, UnreadableImageError, detections_to_result, load_image
from lpr.zoom import BoardZoom, set_zoom

__all__ = ["PlateReader", "UnreadableImageError", "detections_to_result", "load_image"]  # the last three: lpr.results


class PlateReader(ReaderBase):
    """Reads plates from images with a Mask R-CNN and its class list.

    Args:
        model: a torchvision Mask R-CNN (put in eval mode here).
        classes: its class names in label order.
        device: where the model runs.
        score_thr, reading, max_side, roi: as :class:`lpr.results.ReaderBase`.

    Example:
        >>> reader = PlateReader.from_checkpoint("best-val_EIR.ckpt")
        >>> reader("car.jpg")["plates"]
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        *,
        device: str | torch.device = "cpu",
        score_thr: float = 0.5,
        reading: dict | None = None,
        max_side: int = 2048,
        roi: Sequence[int] | None = None,
    ) -> None:
        super().__init__(classes, score_thr=score_thr, reading=reading, max_side=max_side, roi=roi)
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        score_thr: float | None = None,
        max_side: int = 2048,
        roi: Sequence[int] | None = None,
        zoom: bool | None = None,
    ) -> PlateReader:
        """Everything from the checkpoint alone: model, classes and its plate-reading settings.
        ``zoom``: ``None`` reads small boards again as the model was configured (:mod:`lpr.zoom`),
        ``True`` also with a model configured without it, ``False`` in one pass."""
        loaded = load(path, map_location=device)
        reading = dict(loaded.module.hparams.get("metrics", {}).get("plates", {}))
        thr = score_thr if score_thr is not None else reading.get("score_thr", 0.5)
        set_zoom(loaded.model, loaded.classes, zoom)
        return cls(
            loaded.model, loaded.classes, device=device, score_thr=thr, reading=reading, max_side=max_side, roi=roi
        )

    @staticmethod
    def from_onnx(
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        score_thr: float | None = None,
        max_side: int = 2048,
        roi: Sequence[int] | None = None,
        zoom: bool | None = None,
    ) -> OnnxPlateReader:
        """A reader of the same API on an ONNX export (``python -m lpr.export``), run by onnxruntime."""
        return OnnxPlateReader(path, device=device, score_thr=score_thr, max_side=max_side, roi=roi, zoom=zoom)

    @property
    def zoom(self) -> BoardZoom | None:
        """The model's second look at small boards (:mod:`lpr.zoom`); ``None``: one pass."""
        return getattr(self.model, "zoom", None)

    @torch.inference_mode()
    def detect(self, images: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        """The model's detections of RGB uint8 images, in one forward pass."""
        tensors = [torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).float().div_(255.0) for rgb in images]
        return self.model(tensors)
