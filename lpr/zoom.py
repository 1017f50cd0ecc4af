"""A second look at small plates: boards found too small to read are read again, enlarged.

A plate 60 px wide in a 384x288 image has characters 5 px wide and 9 px tall:
the detector finds the board but misses or misreads its characters. Plate
readers work in two stages for this reason (find the plate, then read it
large); :class:`BoardZoom` adds that second stage to lpr's one-stage model. For
every board the model sees narrower than ``max_width`` it cuts a window of the
image around the board, with the image's aspect ratio and so small that the
model's resize makes the board about ``target_width`` wide, runs the same model
on it, and replaces the first pass's detections on that board (its regions and
characters) with the second pass's. The board's own detection stays.

Widths are in the model's input pixels (after its resize), so the rule holds
for images of any size: the plate recipe enlarges 384x288 images 1.5x, so its
180 px are a board 120 px wide there, and a 1920x1080 frame, which the same
resize shrinks to 0.3x, has its boards under 600 px looked at again.

The planning here is torch-free, shared by the PyTorch model
(:class:`lpr.models.maskrcnn.PlateMaskRCNN`) and the ONNX reader
(:class:`lpr.onnx_reader.OnnxPlateReader`); each runs its own second pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lpr.plates import BOARD_TYPES, box_iou_np


def board_labels(classes: Sequence[str]) -> list[int]:
    """The labels (class index + 1) of the board classes in a class list."""
    return [list(classes).index(name) + 1 for name in BOARD_TYPES if name in classes]


def with_zoom(current: BoardZoom | None, classes: Sequence[str], zoom: bool | None) -> BoardZoom | None:
    """A reader's zoom: ``None`` keeps the model's own (``current``), ``True`` gives a model without
    one :class:`BoardZoom`'s defaults, ``False`` reads in one pass."""
    if zoom is None:
        return current
    if not zoom:
        return None
    return current or BoardZoom(board_labels(classes))


def set_zoom(model: object, classes: Sequence[str], zoom: bool | None) -> BoardZoom | None:
    """Set a loaded model's second look as a reader asks (:func:`with_zoom`) and return it; a model
    without one (not lpr's :class:`~lpr.models.maskrcnn.PlateMaskRCNN`) is left as it is."""
    if hasattr(model, "zoom"):
        model.zoom = with_zoom(model.zoom, classes, zoom)
    return getattr(model, "zoom", None)


def settings(zoom: BoardZoom | None) -> dict | None:
    """A zoom's settings as JSON-ready values (``None``: one pass), as reports and exports name them."""
    return None if zoom is None else dataclasses.asdict(zoom)


def _centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0], axis=1)


def _inside(boxes: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Which of ``boxes (N,4)`` have their centre inside ``box`` (borders included)."""
    c = _centres(boxes.reshape(-1, 4))
    return (c[:, 0] >= box[0]) & (c[:, 0] <= box[2]) & (c[:, 1] >= box[1]) & (c[:, 1] <= box[3])


@dataclass(frozen=True)
class BoardZoom:
    """Which boards are read a second time, and how large.

    Args:
        board_labels: the labels of the board classes (``l_board``, ``r_board``).
        max_width: boards the model sees narrower than this (its input pixels) are read again ...
        target_width: ... on a window of the image that the model's resize makes them about this
            wide in ...
        max_scale: ... but enlarges the image's own pixels at most this much (input pixels per
            image pixel: past it there is nothing more to see).
        min_score: only boards detected with this score or more.
    """

    board_labels: tuple[int, ...]
    max_width: float = 180.0
    target_width: float = 240.0
    max_scale: float = 4.5
    min_score: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "board_labels", tuple(int(v) for v in self.board_labels))
        if not (self.max_width > 0 and self.target_width > 0 and self.max_scale > 0):
            raise ValueError(
                "max_width, target_width and max_scale must be > 0, "
                f"got {self.max_width}, {self.target_width}, {self.max_scale}"
            )
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")

    def windows(
        self, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, width: int, height: int, scale: float
    ) -> list[tuple[int, tuple[int, int, int, int]]]:
        """The boards of one image's detections to read again, best first, each with its window
        ``(x1, y1, x2, y2)`` in the image's pixels. ``scale`` is the model's resize of the image
        (input pixels per image pixel). A board whose centre lies inside one already chosen (a plate
        found as both board types) is not read twice.
        """
        boxes, labels, scores = np.asarray(boxes).reshape(-1, 4), np.asarray(labels), np.asarray(scores)
        chosen: list[tuple[int, tuple[int, int, int, int]]] = []
        boards = np.flatnonzero(np.isin(labels, self.board_labels) & (scores >= self.min_score))
        for i in boards[np.argsort(-scores[boards], kind="stable")]:
            box = boxes[i]
            seen = float(box[2] - box[0]) * scale  # the board's width as the model sees it
            factor = min(self.target_width / max(seen, 1.0), self.max_scale / scale)
            if seen >= self.max_width or factor <= 1 or any(_inside(box, boxes[j])[0] for j, _ in chosen):
                continue
            w, h = min(width, math.ceil(width / factor)), min(height, math.ceil(height / factor))
            x1 = int(np.clip(round((box[0] + box[2]) / 2 - w / 2), 0, width - w))
            y1 = int(np.clip(round((box[1] + box[3]) / 2 - h / 2), 0, height - h))
            chosen.append((int(i), (x1, y1, x1 + w, y1 + h)))
        return chosen

    def replaced(self, board: int, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Which of the first pass's detections the second look at ``board`` (an index) replaces:
        those centred inside the board, except boards."""
        boxes, labels = np.asarray(boxes).reshape(-1, 4), np.asarray(labels)
        return _inside(boxes, boxes[board]) & ~np.isin(labels, self.board_labels)

    def taken(
        self, board_box: Sequence[float], board_label: int, boxes: np.ndarray, labels: np.ndarray
    ) -> np.ndarray | None:
        """The indices of the second pass's detections (``boxes`` in the image's pixels) that take
        the first pass's place: those centred inside the second pass's view of the board (its
        board of the same type overlapping ``board_box`` most, by IoU >= 0.5), except boards.
        ``None`` when the second pass did not find the board: the first pass's reading stays.
        """
        boxes, labels = np.asarray(boxes).reshape(-1, 4), np.asarray(labels)
        same = np.flatnonzero(labels == board_label)
        if not len(same):
            return None
        ious = box_iou_np(np.asarray(board_box, dtype=np.float64).reshape(1, 4), boxes[same].astype(np.float64))[0]
        if ious.max() < 0.5:
            return None
        seen = boxes[same[np.argmax(ious)]]
        return np.flatnonzero(_inside(boxes, seen) & ~np.isin(labels, self.board_labels))
