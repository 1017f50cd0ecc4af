"""DV IoU: box IoU that also checks the shape, through slices of the boundary polygon (docs/metrics.md, DV mAP).

Pure numpy/OpenCV functions; the COCO-protocol evaluation around them is in
:mod:`lpr.metrics.coco`.
"""

from __future__ import annotations

import cv2
import numpy as np


def boundary_polygon(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The outer boundary of a binary mask: ``(n, 2)`` int (x, y) points, or ``(0, 2)`` if empty.

    ``cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_NONE)``; the contour with the largest
    ``cv2.contourArea`` wins (ties: more points, then the first found).

    Args:
        mask: ``(H, W)`` binary mask (any dtype; non-zero is inside).
        offset: ``(x, y)`` added to the points (when ``mask`` is a crop).
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return np.zeros((0, 2), np.int64)
    best = max(range(len(contours)), key=lambda i: (cv2.contourArea(contours[i]), len(contours[i]), -i))
    return contours[best].reshape(-1, 2).astype(np.int64) + np.asarray(offset, np.int64)


def slice_boxes(points: np.ndarray, k: int = 3, min_points: int = 10) -> np.ndarray | None:
    """Boxes of ``k`` slices of a polygon along x, then ``k`` along y: ``(2k, 4)`` xyxy, or None.

    Points are sorted by x (stable) and cut into ``k`` consecutive chunks of
    ``n // k`` points, the last chunk taking the rest; each chunk's box is
    ``[min x, min y, max x, max y]``. The same sorted by y follows. A polygon
    with fewer than ``k * min_points`` points cannot be divided (None).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(points)
    if n < k * min_points or n == 0:
        return None
    starts = np.arange(k) * (n // k)
    out = np.empty((2 * k, 4), np.float64)
    for axis in (0, 1):
        p = points[np.argsort(points[:, axis], kind="stable")].astype(np.float64)
        out[axis * k : (axis + 1) * k, :2] = np.minimum.reduceat(p, starts)
        out[axis * k : (axis + 1) * k, 2:] = np.maximum.reduceat(p, starts)
    return out


def mask_slices(
    mask: np.ndarray, box: np.ndarray | None = None, *, k: int = 3, min_points: int = 10, margin: float = 0.15
) -> np.ndarray | None:
    """:func:`slice_boxes` of a mask's :func:`boundary_polygon`, looking only near ``box``.

    Args:
        mask: ``(H, W)`` binary mask of one instance, image-sized.
        box: its xyxy box; the contour is taken in the box grown by ``margin``
            of its size plus 2 px (a pasted mask may spill slightly past its box).
            ``None`` searches the whole mask.
    """
    offset = (0, 0)
    if box is not None:
        h, w = mask.shape
        x1, y1, x2, y2 = (float(v) for v in box)
        mx, my = margin * (x2 - x1) + 2, margin * (y2 - y1) + 2
        xa, ya = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
        xb, yb = min(w, int(np.ceil(x2 + mx)) + 1), min(h, int(np.ceil(y2 + my)) + 1)
        mask, offset = mask[ya:yb, xa:xb], (xa, ya)
    return slice_boxes(boundary_polygon(mask, offset), k, min_points)


def dv_iou_matrix(
    pred_boxes: np.ndarray,
    pred_slices: np.ndarray,
    pred_ok: np.ndarray,
    gt_boxes: np.ndarray,
    gt_slices: np.ndarray,
    gt_ok: np.ndarray,
    gt_crowd: np.ndarray | None = None,
) -> np.ndarray:
    """DV IoU of every (prediction, ground truth) pair: ``(P, G)``.

    ``dv_iou = min(box_iou(p, g), box_iou(p_s, g_s) for the 2k slice pairs s)``;
    0 where either polygon could not be divided. Box IoU uses areas
    ``(x2 - x1) * (y2 - y1)``; a union of 0 gives 1.0. For crowd ground truth
    (COCO's convention) every overlap is intersection over the prediction's area.

    Args:
        pred_boxes: ``(P, 4)`` xyxy.
        pred_slices: ``(P, 2k, 4)`` slice boxes (rows of undivided ones are ignored).
        pred_ok: ``(P,)`` bool, the polygon could be divided.
        gt_boxes, gt_slices, gt_ok: the same for the ground truth.
        gt_crowd: ``(G,)`` bool crowd flags, or None.
    """
    p, g = len(pred_boxes), len(gt_boxes)
    if p == 0 or g == 0:
        return np.zeros((p, g))
    a = np.concatenate([pred_boxes[:, None, :], pred_slices], axis=1)  # (P, 1+2k, 4)
    b = np.concatenate([gt_boxes[:, None, :], gt_slices], axis=1)  # (G, 1+2k, 4)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])  # (P, S)
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # (G, S)
    lt = np.maximum(a[:, None, :, :2], b[None, :, :, :2])
    rb = np.minimum(a[:, None, :, 2:], b[None, :, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]  # (P, G, S)
    union = area_a[:, None, :] + area_b[None, :, :] - inter
    if gt_crowd is not None and np.any(gt_crowd):
        union = np.where(np.asarray(gt_crowd, bool)[None, :, None], area_a[:, None, :], union)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)
    dv = iou.min(axis=2)
    return np.where(pred_ok[:, None] & gt_ok[None, :], dv, 0.0)


def mask_dv_iou(pred_mask: np.ndarray, pred_box: np.ndarray, gt_mask: np.ndarray, gt_box: np.ndarray) -> float:
    """DV IoU of one pair given image-sized binary masks and their xyxy boxes (default ``k`` and ``min_points``)."""
    p, g = mask_slices(pred_mask, pred_box), mask_slices(gt_mask, gt_box)
    if p is None or g is None:
        return 0.0
    ok = np.ones(1, bool)
    pb, gb = np.asarray(pred_box, np.float64)[None], np.asarray(gt_box, np.float64)[None]
    return float(dv_iou_matrix(pb, p[None], ok, gb, g[None], ok)[0, 0])


def dv_iou(pred_box, pred_points, gt_box, gt_points, *, k: int = 3, min_points: int = 10) -> float:
    """DV IoU of one pair given boxes and boundary polygons (``(n, 2)`` points)."""
    ps, gs = slice_boxes(np.asarray(pred_points), k, min_points), slice_boxes(np.asarray(gt_points), k, min_points)
    if ps is None or gs is None:
        return 0.0
    pb, gb = np.asarray(pred_box, np.float64)[None], np.asarray(gt_box, np.float64)[None]
    return float(dv_iou_matrix(pb, ps[None], np.ones(1, bool), gb, gs[None], np.ones(1, bool))[0, 0])
