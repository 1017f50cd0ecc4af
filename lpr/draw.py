"""Drawing results: masks, boxes, labels and the read plate text on the image."""

from __future__ import annotations

import cv2
import numpy as np

# BGR colours by kind of class: characters, text regions, boards.
CHAR_COLOUR = (60, 60, 235)
REGION_COLOUR = (235, 150, 40)
ROI_COLOUR = (255, 255, 255)  # BGR: the region read, when not all of the image
BOARD_COLOUR = (60, 200, 60)
TEXT_COLOUR = (255, 255, 255)


def _colour(label: str) -> tuple[int, int, int]:
    if len(label) == 1:
        return CHAR_COLOUR
    return BOARD_COLOUR if label.endswith("board") else REGION_COLOUR


def _label(image: np.ndarray, text: str, x: int, y: int, scale: float, colour, thickness: int = 1) -> None:
    """Text on a filled box whose bottom-left corner is (x, y), kept inside the image."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    h, w = image.shape[:2]
    x = int(min(max(0, x), max(0, w - tw - 2)))
    y = int(min(max(th + base + 1, y), h - 1))
    cv2.rectangle(image, (x, y - th - base - 1), (x + tw + 2, y), colour, -1)
    cv2.putText(image, text, (x + 1, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOUR, thickness, cv2.LINE_AA)


def draw_result(
    image_bgr: np.ndarray, result: dict, *, mask_alpha: float = 0.35, char_labels: bool = True
) -> np.ndarray:
    """A copy of ``image_bgr`` with the result drawn.

    Masks are filled polygons blended at ``mask_alpha``, boxes outlined, each
    detection labelled (characters small, above their box), every read
    plate's text written large above its board, and the region read (``roi``)
    outlined when only part of the image was read.
    """
    canvas = image_bgr.copy()
    if result.get("roi"):
        x, y, w, h = result["roi"]
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), ROI_COLOUR, 1, cv2.LINE_4)
    overlay = canvas.copy()
    for det in result["detections"]:
        if det["polygon"]:
            pts = np.asarray(det["polygon"], np.float64).round().astype(np.int32).reshape(-1, 1, 2)
            cv2.fillPoly(overlay, [pts], _colour(det["label"]))
    cv2.addWeighted(overlay, mask_alpha, canvas, 1 - mask_alpha, 0, dst=canvas)
    size = max(canvas.shape[:2])
    small = max(0.3, size / 1400)
    for det in result["detections"]:
        x1, y1, x2, y2 = (round(v) for v in det["box"])
        colour = _colour(det["label"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 1)
        if char_labels and len(det["label"]) == 1:
            _label(canvas, det["label"], x1, y1, small, colour)
    for plate in result["plates"]:
        x1, y1, x2, y2 = (round(v) for v in plate["box"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), BOARD_COLOUR, 2)
        big = max(0.45, (x2 - x1) / 180)
        _label(canvas, f"{plate['text']} {plate['score']:.2f}", x1, y1 - 2, big, BOARD_COLOUR, 1 + int(big > 0.8))
    return canvas
