"""The COCO protocol, by pycocotools itself: bbox/segm mAP, and DV mAP through a custom overlap.

Using ``COCOeval`` directly (float64 IoU thresholds, its own matching,
crowd/ignore handling and 101-point interpolation) is what makes the numbers
equal the official evaluator's; DV mAP only swaps ``computeIoU``.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterator

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lpr.metrics.dv import dv_iou_matrix

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """pycocotools prints progress to stdout; keep the console for lpr's own summary."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def make_coco(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    """A pycocotools ``COCO`` from in-memory lists (no file)."""
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with quiet():
        coco.createIndex()
    return coco


def _xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def _precision_summary(evaluator: COCOeval) -> dict:
    """AP, AP50, AP75 (area ``all``, the last maxDets) and per-category AP from ``eval["precision"]``."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    thresholds = evaluator.params.iouThrs

    def mean(p: np.ndarray) -> float:
        p = p[p > -1]
        return float(p.mean()) if p.size else -1.0

    per_class = {int(cat): mean(precision[:, :, k]) for k, cat in enumerate(evaluator.params.catIds)}
    return {
        "AP": mean(precision),
        "AP50": mean(precision[np.isclose(thresholds, 0.5)]),
        "AP75": mean(precision[np.isclose(thresholds, 0.75)]),
        "per_class": per_class,
        "precision": precision,
    }


def coco_evaluate(gt: COCO, results: list[dict], iou_type: str) -> dict:
    """Run pycocotools ``COCOeval`` on a results list.

    Args:
        gt: the ground truth.
        results: COCO results (``image_id``, ``category_id``, ``score`` and
            ``bbox`` xywh or ``segmentation`` RLE), passed to ``loadRes`` unchanged.
            Note pycocotools' rule: when a result has a ``bbox``, its *box* area
            decides small/medium/large even for segm; leave ``bbox`` out of
            segm results to use the mask area.
        iou_type: ``"bbox"`` or ``"segm"``.

    Returns:
        ``{"stats": {AP, AP50, ..., ARl} (COCOeval.stats), "per_class": {cat_id: AP},
        "precision": (T, R, K) array}``.
    """
    results = copy.deepcopy(results)  # loadRes writes into the dicts
    with quiet():
        dt = gt.loadRes(results) if results else make_coco(gt.dataset["images"], gt.dataset["categories"], [])
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = _precision_summary(evaluator)
    return {
        "stats": dict(zip(STAT_NAMES, (float(s) for s in evaluator.stats), strict=True)),
        "per_class": summary["per_class"],
        "precision": summary["precision"],
    }


class DVCOCOeval(COCOeval):
    """``COCOeval`` with DV IoU as the overlap, over one area range (``all``).

    Every ground-truth annotation and result must carry ``dv_slices`` (``(2k, 4)``
    array, or None when its polygon cannot be divided) besides ``bbox`` (xywh).
    """

    def __init__(self, gt: COCO, dt: COCO) -> None:
        super().__init__(gt, dt, "bbox")
        self.params.areaRng = [[0.0, 1e10]]
        self.params.areaRngLbl = ["all"]

    @staticmethod
    def _arrays(anns: list[dict], k2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes = _xywh_to_xyxy([a["bbox"] for a in anns])
        ok = np.array([a["dv_slices"] is not None for a in anns], bool)
        slices = np.zeros((len(anns), k2, 4))
        for i, a in enumerate(anns):
            if ok[i]:
                slices[i] = a["dv_slices"]
        return boxes, slices, ok

    def computeIoU(self, imgId: int, catId: int):
        gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        if not gt or not dt:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")  # as COCOeval does
        dt = [dt[i] for i in order][: self.params.maxDets[-1]]
        k2 = next((len(a["dv_slices"]) for a in gt + dt if a["dv_slices"] is not None), 2)
        db, ds, dok = self._arrays(dt, k2)
        gb, gs, gok = self._arrays(gt, k2)
        crowd = np.array([bool(g.get("iscrowd", 0)) for g in gt])
        return dv_iou_matrix(db, ds, dok, gb, gs, gok, crowd)


def dv_evaluate(gt: COCO, results: list[dict]) -> dict:
    """DV mAP by the COCO protocol; ``gt`` annotations and ``results`` carry ``dv_slices``.

    Returns:
        ``{"AP", "AP50", "AP75", "per_class": {cat_id: AP}, "precision"}``.
    """
    annotations = []
    for i, r in enumerate(results, start=1):
        _, _, w, h = r["bbox"]
        annotations.append({**r, "id": i, "area": float(w * h), "iscrowd": 0})
    dt = make_coco(gt.dataset["images"], gt.dataset["categories"], annotations)
    with quiet():
        evaluator = DVCOCOeval(gt, dt)
        evaluator.evaluate()
        evaluator.accumulate()
    return _precision_summary(evaluator)
