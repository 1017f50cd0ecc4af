"""From images to result dicts, the part every plate reader shares (no torch here).

A reader turns an RGB image into detections (:meth:`ReaderBase.detect`); what
comes before (loading, downscaling huge inputs) and after (polygons from masks,
plate reading) is the same for the PyTorch model (:class:`lpr.reader.PlateReader`)
and the exported ONNX model (:class:`lpr.onnx_reader.OnnxPlateReader`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lpr.data.validate import read_image_bgr
from lpr.metrics.dv import boundary_polygon
from lpr.plates import one_per_plate, read_plates
from lpr.zoom import BoardZoom

ImageInput = np.ndarray | str | os.PathLike
READING_KEYS = ("char_nms_iou", "sub_pattern", "main_pattern")  # plate-reading settings besides score_thr


class UnreadableImageError(OSError):
    """An input file is missing, empty, or not a decodable image."""


def load_image(image: ImageInput, *, color: str = "bgr") -> tuple[np.ndarray, str]:
    """Any supported input as an RGB uint8 ``(H, W, 3)`` array and a display name.

    Grayscale inputs are expanded to three channels and alpha channels dropped.

    Args:
        image: a path (jpg, png, bmp, webp, ...) or a ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` uint8 array.
        color: channel order of array inputs, ``"bgr"`` (OpenCV) or ``"rgb"``.

    Raises:
        UnreadableImageError: the file is missing, empty or not an image.
        ValueError: an array of another shape or dtype, or an unknown ``color``.
    """
    if color not in ("bgr", "rgb"):
        raise ValueError(f"color must be 'bgr' or 'rgb', got {color!r}")
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            array = read_image_bgr(path)
        except OSError as e:
            raise UnreadableImageError(str(e)) from None
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB), path.name
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected a uint8 (H, W), (H, W, 3) or (H, W, 4) image, got {array.dtype} {array.shape}")
    if array.ndim == 2 or array.shape[2] == 1:
        return cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2RGB), "<array>"
    array = array[..., :3]
    return (cv2.cvtColor(array, cv2.COLOR_BGR2RGB) if color == "bgr" else array.copy()), "<array>"


def fit_max_side(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``rgb`` downscaled (area interpolation) so that its longer side is at most ``max_side``, and the
    factor from its pixels back to the original ones (1.0 when it already fits)."""
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb, 1.0
    scale = max(h, w) / max_side
    return cv2.resize(rgb, (round(w / scale), round(h / scale)), interpolation=cv2.INTER_AREA), scale


def check_roi(roi: Sequence[int]) -> tuple[int, int, int, int]:
    """``roi`` as ``(x, y, width, height)`` integers, or a ValueError naming what is wrong."""
    values = list(roi) if isinstance(roi, Sequence) and not isinstance(roi, str) else None
    if values is None or len(values) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"roi must be [x, y, width, height] in pixels (4 integers), got {roi!r}")
    x, y, w, h = values
    if x < 0 or y < 0 or w < 32 or h < 32:
        raise ValueError(f"roi [x, y, width, height] needs x, y >= 0 and width, height >= 32, got {values}")
    return x, y, w, h


def _numpy(value: Any) -> np.ndarray:
    """A numpy array of a numpy array or a torch tensor (on any device), without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def detections_to_result(
    output: Mapping[str, Any],
    classes: Sequence[str],
    *,
    image: str,
    width: int,
    height: int,
    score_thr: float = 0.5,
    reading: dict | None = None,
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> dict:
    """One image's detections as the lpr result dict.

    Args:
        output: ``boxes`` (xyxy), ``labels``, ``scores``, optional ``masks`` ``(N, 1, H, W)`` soft masks
            in the model-input pixels and ``char_probs`` ``(N, classes)`` (plates are then read with
            them: :func:`lpr.plates.read_plates`); numpy arrays or torch tensors.
        classes: class names (label ``i + 1`` is ``classes[i]``).
        image, width, height: what the result describes (original pixels).
        score_thr: detections below it are left out (and not read).
        reading: the other plate-reading settings (:func:`lpr.plates.read_plates`).
        scale: factor from model-input pixels back to original pixels.
        offset: ``(x, y)`` of the model input's top-left corner in the original image (a region of
            interest read alone), added after ``scale``.

    Returns:
        ``{image, width, height, detections: [{label, score, box, polygon}],
        plates: [{type, text, sub, main, box, score}]}``.
    """
    scores = _numpy(output["scores"])
    keep = scores >= score_thr
    shift = np.array([offset[0], offset[1]] * 2, np.float64)
    input_boxes = _numpy(output["boxes"])[keep].astype(np.float64)  # in the model input's pixels
    boxes = input_boxes * scale + shift
    labels = _numpy(output["labels"])[keep]
    scores = scores[keep]
    masks = None
    if "masks" in output:
        kept = np.flatnonzero(keep)
        masks = _numpy(output["masks"][kept.tolist()][:, 0] >= 0.5) if len(kept) else None
    detections = []
    for i in range(len(labels)):
        polygon: list[list[float]] = []
        if masks is not None:
            x1, y1, x2, y2 = input_boxes[i]
            h, w = masks.shape[-2:]
            xa, ya = max(0, int(x1) - 4), max(0, int(y1) - 4)
            xb, yb = min(w, int(np.ceil(x2)) + 5), min(h, int(np.ceil(y2)) + 5)
            pts = boundary_polygon(masks[i, ya:yb, xa:xb].astype(np.uint8), (xa, ya))
            if len(pts) > 2:
                pts = cv2.approxPolyDP(pts.reshape(-1, 1, 2).astype(np.int32), 1.0, True).reshape(-1, 2)
                polygon = (pts * scale + shift[:2]).round(1).tolist()
        detections.append(
            {
                "label": classes[int(labels[i]) - 1],
                "score": round(float(scores[i]), 4),
                "box": boxes[i].round(1).tolist(),
                "polygon": polygon,
            }
        )
    probs = _numpy(output["char_probs"])[keep] if "char_probs" in output else None
    readings = read_plates(
        boxes, labels, scores, classes, char_probs=probs, **{**(reading or {}), "score_thr": score_thr}
    )
    # one reading per plate: a plate read both as a one-line and a two-line board is listed once, as
    # the board scored higher (EIR scores every reading: the other one counts against plate_precision)
    best_first = sorted(range(len(readings)), key=lambda i: -readings[i].score)
    kept = one_per_plate(np.asarray([r.box for r in readings]), best_first)
    plates = [{k: v for k, v in readings[i].to_dict().items() if k != "center"} for i in kept]
    return {"image": image, "width": width, "height": height, "detections": detections, "plates": plates}


class ReaderBase:
    """Reads plates from images: subclasses say how an image becomes detections (:meth:`detect`).

    Args:
        classes: the model's class names in label order.
        score_thr: detections below it are dropped and not read.
        reading: plate-reading settings (``char_nms_iou``, ``sub_pattern``, ``main_pattern``).
        max_side: larger images are downscaled to this longest side first (results are in
            original pixels); bounds memory for huge inputs.
        roi: ``(x, y, width, height)``: read only this region of every image (clipped to the
            image; results stay in the image's pixels). The model resizes what it reads to its
            input size, so on a frame much wider than the training images a region around the
            plates keeps them at the sizes the model learnt.
    """

    zoom: BoardZoom | None = None  # the second look at small boards, where a reader's model has one

    def __init__(
        self,
        classes: Sequence[str],
        *,
        score_thr: float = 0.5,
        reading: dict | None = None,
        max_side: int = 2048,
        roi: Sequence[int] | None = None,
    ) -> None:
        if not 0.0 <= score_thr <= 1.0:
            raise ValueError(f"score_thr must be in [0, 1], got {score_thr}")
        if max_side < 32:
            raise ValueError(f"max_side must be >= 32, got {max_side}")
        self.classes = list(classes)
        self.score_thr = score_thr
        self.reading = {k: v for k, v in (reading or {}).items() if k in READING_KEYS}
        self.max_side = max_side
        self.roi = None if roi is None else check_roi(roi)

    def detect(self, images: list[np.ndarray]) -> list[Mapping[str, Any]]:
        """Detections of RGB uint8 images: ``boxes``, ``labels``, ``scores`` and ``masks`` ``(N, 1, H, W)``
        (soft, in each image's pixels), as numpy arrays or tensors."""
        raise NotImplementedError

    def read(self, images: Sequence[ImageInput], *, color: str = "bgr") -> list[dict]:
        """Results for several images (see :func:`detections_to_result`)."""
        loaded = [load_image(im, color=color) for im in images]
        regions = [self.region(rgb.shape[1], rgb.shape[0]) for rgb, _ in loaded]
        fitted = [
            fit_max_side(np.ascontiguousarray(rgb[y : y + h, x : x + w]), self.max_side)
            for (rgb, _), (x, y, w, h) in zip(loaded, regions, strict=True)
        ]
        outputs = self.detect([rgb for rgb, _ in fitted])
        results = [
            detections_to_result(
                out, self.classes, image=name, width=rgb.shape[1], height=rgb.shape[0],
                score_thr=self.score_thr, reading=self.reading, scale=scale, offset=(x, y),
            )
            for out, (rgb, name), (_, scale), (x, y, _, _) in zip(outputs, loaded, fitted, regions, strict=True)
        ]  # fmt: skip
        if self.roi is not None:
            for result, region in zip(results, regions, strict=True):
                result["roi"] = list(region)
        return results

    def region(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` of what is read of a ``width`` x ``height`` image: the
        ``roi`` clipped to it, or all of it.

        Raises:
            ValueError: the ``roi`` lies outside the image.
        """
        if self.roi is None:
            return 0, 0, width, height
        x, y, w, h = self.roi
        x1, y1, x2, y2 = min(x, width), min(y, height), min(x + w, width), min(y + h, height)
        if x2 - x1 < 32 or y2 - y1 < 32:
            raise ValueError(f"roi {list(self.roi)} leaves less than 32x32 pixels of a {width}x{height} image")
        return x1, y1, x2 - x1, y2 - y1

    def __call__(self, image: ImageInput, *, color: str = "bgr") -> dict:
        """The result dict of one image (a path, or a numpy array in ``color`` order)."""
        return self.read([image], color=color)[0]
