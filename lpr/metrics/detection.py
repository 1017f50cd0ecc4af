"""torchmetrics ``Metric`` classes for validation: COCO mAP (bbox, segm), DV mAP and EIR.

Each keeps one compact record per image (boxes, scores, RLEs or slice boxes,
plate counts) and runs the pure functions of :mod:`lpr.metrics.coco`,
:mod:`lpr.metrics.dv` and :mod:`lpr.metrics.eir` in ``compute``. Records are
keyed by ``image_id``: under DDP they are gathered from every rank, and an image
that a distributed sampler padded onto two ranks counts once, so the values
equal a single-process run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchmetrics import Metric

from lpr.metrics.coco import coco_evaluate, dv_evaluate, make_coco
from lpr.metrics.dv import mask_slices
from lpr.metrics.eir import miss_counts, plate_counts, plate_report
from lpr.plates import BOARD_TYPES, DEFAULT_MAIN_PATTERN, DEFAULT_SUB_PATTERN, read_boards

MASK_THRESHOLD = 0.5


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def binary_masks(masks: torch.Tensor) -> np.ndarray:
    """Predicted ``(N, 1, H, W)`` probabilities or target ``(N, H, W)`` masks -> ``(N, H, W)`` uint8."""
    if masks.ndim == 4:
        masks = masks[:, 0]
    if masks.is_floating_point():
        masks = masks >= MASK_THRESHOLD
    return masks.to(torch.uint8).cpu().numpy()


def encode_masks(masks: np.ndarray) -> list[dict]:
    """``(N, H, W)`` uint8 -> COCO RLEs (``counts`` as str, JSON-ready)."""
    if not len(masks):
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


class _PerImageMetric(Metric):
    """A metric that keeps one record per image and computes everything at the end."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("records", default=[], dist_reduce_fx=None)

    def update(self, preds: Sequence[dict], targets: Sequence[dict]) -> None:
        """Args: torchvision detections (``boxes`` xyxy, ``scores``, ``labels``, optional
        ``masks`` ``(N, 1, H, W)``, ``char_probs`` ``(N, classes)``) and targets (``boxes``, ``labels``, ``masks``
        ``(N, H, W)``, ``image_id``, optional ``iscrowd``), one per image."""
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        for pred, target in zip(preds, targets, strict=True):
            self.records.append(self._record(pred, target))

    def _record(self, pred: dict, target: dict) -> dict:
        raise NotImplementedError

    # Mid-round the records are dicts of host arrays, which torchmetrics can neither hash (it hashes a
    # metric's state with it) nor move: walking or moving the module tree (parameters(), a Trainer's
    # teardown .cpu(), a weight-averaging callback) would raise TypeError or AttributeError.
    def __hash__(self) -> int:
        return hash((type(self).__name__, id(self)))  # a module's hash only has to tell it from the others

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = ()) -> Metric:
        return super()._apply(fn, exclude_state=(*exclude_state, "records"))

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        # Records hold Python objects (RLE strings, arrays of varying shape), so they travel
        # with all_gather_object, as torchmetrics' own MeanAveragePrecision does for masks.
        gathered: list[list[dict]] = [[] for _ in range(dist.get_world_size(process_group))]
        dist.all_gather_object(gathered, self.records, group=process_group)
        self.records = [r for part in gathered for r in part]

    def unique_records(self) -> list[dict]:
        """Records in image-id order, one per image."""
        seen: dict[int, dict] = {}
        for r in self.records:
            seen.setdefault(r["image_id"], r)
        return [seen[k] for k in sorted(seen)]

    @staticmethod
    def _image(target: dict) -> dict:
        h, w = target["masks"].shape[-2:]
        return {"image_id": int(target["image_id"]), "height": int(h), "width": int(w)}

    @staticmethod
    def _crowd(target: dict) -> np.ndarray:
        n = len(target["labels"])
        return _np(target["iscrowd"]).astype(bool) if "iscrowd" in target else np.zeros(n, bool)

    @staticmethod
    def _coco_inputs(
        records: list[dict],
        num_classes: int,
        gt_extra: Callable[[dict, int], dict],
        det_extra: Callable[[dict, int], dict],
    ) -> tuple[COCO, list[dict]]:
        """Ground truth as a pycocotools ``COCO`` and detections as a results list.

        ``gt_extra(record, i)`` / ``det_extra(record, i)`` add per-instance fields (area, RLE, slices).
        """
        images = [{"id": r["image_id"], "height": r["height"], "width": r["width"]} for r in records]
        annotations, results = [], []
        for r in records:
            for i in range(len(r["gt_labels"])):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": r["image_id"],
                        "category_id": int(r["gt_labels"][i]),
                        "bbox": r["gt_boxes"][i].tolist(),
                        "iscrowd": int(r["gt_crowd"][i]),
                        **gt_extra(r, i),
                    }
                )
            for i in range(len(r["det_labels"])):
                results.append(
                    {
                        "image_id": r["image_id"],
                        "category_id": int(r["det_labels"][i]),
                        "score": float(r["det_scores"][i]),
                        "bbox": r["det_boxes"][i].tolist(),
                        **det_extra(r, i),
                    }
                )
        categories = [{"id": i} for i in range(1, num_classes + 1)]
        return make_coco(images, categories, annotations), results


class CocoMAP(_PerImageMetric):
    """COCO bbox and segm mAP by pycocotools' ``COCOeval`` (exactly its numbers).

    Args:
        num_classes: foreground classes (labels ``1..num_classes``).
        iou_types: ``("bbox", "segm")`` or one of them.

    ``compute()`` returns ``{"mAP", "mAP_50", "segm_mAP", "segm_mAP_50"}`` (floats; None
    for a type not evaluated) and ``"details"``: ``{iou_type: coco_evaluate(...)}``.
    """

    def __init__(self, num_classes: int, iou_types: Sequence[str] = ("bbox", "segm"), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not set(iou_types) <= {"bbox", "segm"} or not iou_types:
            raise ValueError(f"iou_types must be a non-empty subset of ('bbox', 'segm'), got {iou_types}")
        self.num_classes = num_classes
        self.iou_types = tuple(iou_types)

    def _record(self, pred: dict, target: dict) -> dict:
        segm = "segm" in self.iou_types and "masks" in pred
        gt_rles = encode_masks(binary_masks(target["masks"]))
        return {
            **self._image(target),
            "det_boxes": _xywh(_np(pred["boxes"])),
            "det_scores": _np(pred["scores"]).astype(np.float64),
            "det_labels": _np(pred["labels"]).astype(np.int64),
            "det_rles": encode_masks(binary_masks(pred["masks"])) if segm else None,
            "gt_boxes": _xywh(_np(target["boxes"])),
            "gt_labels": _np(target["labels"]).astype(np.int64),
            "gt_crowd": self._crowd(target),
            "gt_rles": gt_rles,
        }

    def compute(self) -> dict:
        records = self.unique_records()
        has_masks = any(r["det_rles"] is not None for r in records)
        gt, results = self._coco_inputs(
            records,
            self.num_classes,
            lambda r, i: {"area": float(mask_utils.area(r["gt_rles"][i])), "segmentation": r["gt_rles"][i]},
            lambda r, i: {"segmentation": r["det_rles"][i]} if r["det_rles"] is not None else {},
        )
        out: dict[str, Any] = {"mAP": None, "mAP_50": None, "segm_mAP": None, "segm_mAP_50": None, "details": {}}
        if "bbox" in self.iou_types:
            res = coco_evaluate(gt, [{k: v for k, v in d.items() if k != "segmentation"} for d in results], "bbox")
            out.update(mAP=res["stats"]["AP"], mAP_50=res["stats"]["AP50"])
            out["details"]["bbox"] = res
        if "segm" in self.iou_types and has_masks:
            masks = [{k: v for k, v in d.items() if k != "bbox"} for d in results]
            res = coco_evaluate(gt, masks, "segm")  # no bbox in segm results: mask areas decide sizes
            out.update(segm_mAP=res["stats"]["AP"], segm_mAP_50=res["stats"]["AP50"])
            out["details"]["segm"] = res
        return out


class DVMeanAP(_PerImageMetric):
    """DV mAP (docs/metrics.md, DV mAP): the COCO AP protocol with DV IoU as the overlap.

    Args:
        num_classes: foreground classes (labels ``1..num_classes``).
        k: slices per axis.
        min_points: a boundary needs ``k * min_points`` points to be divided.

    ``compute()`` returns ``{"dv_mAP", "dv_mAP_50", "dv_mAP_75", "details"}``; all None when
    the predictions carry no masks.
    """

    def __init__(self, num_classes: int, k: int = 3, min_points: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if k < 1 or min_points < 1:
            raise ValueError(f"k and min_points must be >= 1, got k={k}, min_points={min_points}")
        self.num_classes, self.k, self.min_points = num_classes, k, min_points

    def _slices(self, masks: np.ndarray, boxes: np.ndarray) -> list[np.ndarray | None]:
        return [mask_slices(m, b, k=self.k, min_points=self.min_points) for m, b in zip(masks, boxes, strict=True)]

    def _record(self, pred: dict, target: dict) -> dict:
        det_boxes, gt_boxes = _np(pred["boxes"]), _np(target["boxes"])
        return {
            **self._image(target),
            "det_boxes": _xywh(det_boxes),
            "det_scores": _np(pred["scores"]).astype(np.float64),
            "det_labels": _np(pred["labels"]).astype(np.int64),
            "det_slices": self._slices(binary_masks(pred["masks"]), det_boxes) if "masks" in pred else None,
            "gt_boxes": _xywh(gt_boxes),
            "gt_labels": _np(target["labels"]).astype(np.int64),
            "gt_crowd": self._crowd(target),
            "gt_slices": self._slices(binary_masks(target["masks"]), gt_boxes),
        }

    def compute(self) -> dict:
        records = self.unique_records()
        if any(r["det_slices"] is None for r in records):
            return {"dv_mAP": None, "dv_mAP_50": None, "dv_mAP_75": None, "details": None}
        gt, results = self._coco_inputs(
            records,
            self.num_classes,
            lambda r, i: {"area": 1.0, "dv_slices": r["gt_slices"][i]},  # one area range: sizes do not matter
            lambda r, i: {"dv_slices": r["det_slices"][i]},
        )
        res = dv_evaluate(gt, results)
        return {"dv_mAP": res["AP"], "dv_mAP_50": res["AP50"], "dv_mAP_75": res["AP75"], "details": res}


class ExactInferenceRate(_PerImageMetric):
    """EIR and plate precision (docs/metrics.md, EIR).

    Args:
        classes: class names in label order; without ``l_board``/``r_board`` the
            metric is undefined and ``compute`` gives None.
        score_thr, char_nms_iou, sub_pattern, main_pattern: the reading rule
            (see :func:`lpr.plates.read_plates`).
        width_ratio, height_ratio: centre-distance limits of a match.

    ``compute()`` returns ``{"EIR", "plate_precision", "counts", "plates"}``; ``plates``
    lists every readable GT plate with the text read there and whether it matched (if not,
    why: ``miss``, :data:`lpr.metrics.eir.MISSES`), ``counts["missed"]`` the plates per cause.
    """

    def __init__(
        self,
        classes: Sequence[str],
        *,
        score_thr: float = 0.5,
        char_nms_iou: float = 0.5,
        sub_pattern: str = DEFAULT_SUB_PATTERN,
        main_pattern: str = DEFAULT_MAIN_PATTERN,
        width_ratio: float = 0.1,
        height_ratio: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.classes = list(classes)
        self.reading = {
            "score_thr": score_thr,
            "char_nms_iou": char_nms_iou,
            "sub_pattern": sub_pattern,
            "main_pattern": main_pattern,
        }
        self.ratios = {"width_ratio": width_ratio, "height_ratio": height_ratio}
        self.defined = any(b in self.classes for b in BOARD_TYPES)

    def _record(self, pred: dict, target: dict) -> dict:
        image_id = int(target["image_id"])
        if not self.defined:
            return {"image_id": image_id}
        probs = _np(pred["char_probs"]) if "char_probs" in pred else None
        boards = read_boards(
            _np(pred["boxes"]), _np(pred["labels"]), _np(pred["scores"]), self.classes, char_probs=probs, **self.reading
        )
        read = [b for b in boards if b.valid]  # lpr.plates.read_plates: the valid readings
        gt_boxes = read_boards(_np(target["boxes"]), _np(target["labels"]), None, self.classes, **self.reading)
        return {
            "image_id": image_id,
            "counts": plate_counts(read, gt_boxes, **self.ratios),
            "plates": plate_report(read, gt_boxes, boards=boards, **self.ratios),
        }

    def compute(self) -> dict:
        records = self.unique_records()
        if not self.defined:
            return {"EIR": None, "plate_precision": None, "counts": None, "plates": []}
        totals = {key: sum(r["counts"][key] for r in records) for key in ("matched", "gt", "pred", "gt_unreadable")}
        plates = [{"image_id": r["image_id"], **row} for r in records for row in r["plates"]]
        totals["missed"] = miss_counts(plates)
        return {
            "EIR": totals["matched"] / totals["gt"] if totals["gt"] else float("nan"),
            "plate_precision": totals["matched"] / totals["pred"] if totals["pred"] else 0.0,
            "counts": totals,
            "plates": plates,
        }
