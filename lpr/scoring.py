"""The evaluation report, and scoring a COCO results file against a COCO ground truth.

Both modes of ``python -m lpr.evaluate`` write the same report (:func:`make_report`,
printed by :func:`print_table`); the results-file mode (``gt=GT.json
predictions=RESULTS.json``, :func:`evaluate_results`) needs no model and no images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from lpr.data.coco import decode_segmentation
from lpr.data.validate import is_number, load_coco_json, validate_coco
from lpr.metrics.coco import coco_evaluate, quiet
from lpr.metrics.detection import DVMeanAP, ExactInferenceRate
from lpr.metrics.eir import format_misses
from lpr.models.module import VAL_KEYS


class EvaluationInputError(ValueError):
    """A ground-truth or results file that cannot be evaluated."""


def _per_class(classes: list[str], details: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{class: {"bbox_AP", "segm_AP", "dv_AP"}}`` from the metrics' details (label i+1 = classes[i])."""
    table: dict[str, dict[str, float | None]] = {c: {"bbox_AP": None, "segm_AP": None, "dv_AP": None} for c in classes}
    for key, res in details.items():
        if res is None:
            continue
        for label, ap in res["per_class"].items():
            table[classes[label - 1]][key] = None if ap < 0 else ap  # -1: no ground truth of that class
    return table


def make_report(values: dict, classes: list[str], details: dict, plates: list[dict], counts: dict | None) -> dict:
    """The JSON report: the headline metrics, per-class AP, the plate counts and the plate list."""
    report: dict[str, Any] = {k: values.get(k) for k in VAL_KEYS}
    report["per_class"] = _per_class(classes, details)
    report["plate_counts"] = counts
    report["plates"] = plates
    return report


def finite_or_none(v: Any) -> Any:
    """``v``, or None for a float that is NaN or infinite (JSON has neither)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def print_table(report: dict) -> None:
    """The headline metrics, then per-class AP."""
    lines = ["", "metric            value"]
    for key in VAL_KEYS:
        v = report[key]
        lines.append(f"{key:<17} {v:.4f}" if v is not None else f"{key:<17} -")
    counts = report.get("plate_counts") or {}
    if counts.get("missed"):
        lines += ["", f"plates: {counts['matched']} of {counts['gt']} read; {format_misses(counts['missed'])}"]
    width = max([5, *(len(name) for name in report["per_class"])])
    lines += ["", f"{'class':<{width}} {'bbox_AP':>8} {'segm_AP':>8} {'dv_AP':>8}"]
    for name, row in report["per_class"].items():
        cells = " ".join(
            f"{row[k]:>8.4f}" if row[k] is not None else f"{'-':>8}" for k in ("bbox_AP", "segm_AP", "dv_AP")
        )
        lines.append(f"{name:<{width}} {cells}")
    if "classes" in report:  # classes=shared
        shared = report["classes"]
        lines += ["", f"scored: the {len(shared['scored'])} classes both have; annotations left out (not among the "
                  f"model's classes): {shared['not_in_model'] or 'none'}; no ground truth: "
                  f"{shared['not_in_data'] or 'none'}"]  # fmt: skip
    print("\n".join(lines))


def _as_detections(anns: list[dict], image: dict, label_of: dict[int, int], with_masks: bool) -> dict:
    """COCO annotations or results of one image in the torchvision dict format the metrics take."""
    boxes = np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    out = {
        "boxes": boxes,
        "labels": np.asarray([label_of[a["category_id"]] for a in anns], np.int64),
        "scores": np.asarray([a.get("score", 1.0) for a in anns], np.float64),
        "iscrowd": np.asarray([bool(a.get("iscrowd", 0)) for a in anns]),
        "image_id": image["id"],
    }
    if with_masks:
        h, w = image["height"], image["width"]
        masks = np.zeros((len(anns), h, w), np.uint8)
        for i, a in enumerate(anns):
            masks[i] = decode_segmentation(a["segmentation"], h, w)
        out["masks"] = torch.from_numpy(masks)
    return out


def _check_results(results: Any, gt: COCO, path: str) -> None:
    if not isinstance(results, list) or not results:
        raise EvaluationInputError(f"{path}: expected a non-empty JSON list of COCO results")
    for i, r in enumerate(results):
        missing = {"image_id", "category_id", "score"} - set(r)
        if missing:
            raise EvaluationInputError(f"{path}: result {i} lacks {sorted(missing)}")
        if "bbox" not in r and "segmentation" not in r:
            raise EvaluationInputError(f"{path}: result {i} has neither 'bbox' nor 'segmentation'")
        if r["image_id"] not in gt.imgs:
            raise EvaluationInputError(f"{path}: result {i} names image_id {r['image_id']}, not in the ground truth")
        if r["category_id"] not in gt.cats:
            raise EvaluationInputError(
                f"{path}: result {i} names category_id {r['category_id']}, not in the ground truth"
            )
        if not is_number(r["score"]):
            raise EvaluationInputError(f"{path}: result {i} has score {r['score']}: must be a finite number")
        if "bbox" in r and not (isinstance(r["bbox"], list) and len(r["bbox"]) == 4 and all(map(is_number, r["bbox"]))):
            raise EvaluationInputError(
                f"{path}: result {i} has bbox {r['bbox']}: must be 4 finite numbers [x, y, w, h]"
            )


def evaluate_results(gt_path: str, predictions_path: str, metrics: dict | None = None) -> dict:
    """Every metric for a COCO results file against a COCO ground truth (no images needed).

    Results with only boxes give box metrics and None for mask-based ones; results with
    only masks get boxes derived from the masks. Without plate classes, EIR is None.

    Raises:
        EvaluationInputError: unreadable files, or results naming unknown images/categories.
    """
    metrics = metrics or {}
    # the ground truth's numbers checked as a training set's are (its images are not read here)
    validate_coco(
        load_coco_json(gt_path),
        Path(gt_path).parent,
        source=gt_path,
        check_images="none",
        max_pixels=None,
        allow_outside_root=True,
    )
    try:
        with quiet():
            gt = COCO(gt_path)
        results = json.loads(Path(predictions_path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvaluationInputError(f"cannot read {gt_path} / {predictions_path}: {e}") from None
    _check_results(results, gt, predictions_path)
    with_masks = all("segmentation" in r for r in results)
    with_boxes = all("bbox" in r for r in results)
    if not with_boxes and with_masks:
        results = [{**r, "bbox": mask_utils.toBbox(r["segmentation"]).tolist()} for r in results]

    cats = sorted(gt.cats)
    classes = [gt.cats[c]["name"] for c in cats]
    label_of = {c: i + 1 for i, c in enumerate(cats)}
    values: dict[str, Any] = {}
    details: dict[str, Any] = {}
    bbox = coco_evaluate(gt, [{k: v for k, v in r.items() if k != "segmentation"} for r in results], "bbox")
    values.update(mAP=bbox["stats"]["AP"], mAP_50=bbox["stats"]["AP50"])
    details["bbox_AP"] = _by_label(bbox, label_of)
    if with_masks:
        segm = coco_evaluate(gt, results if with_boxes else [_strip_bbox(r) for r in results], "segm")
        values.update(segm_mAP=segm["stats"]["AP"], segm_mAP_50=segm["stats"]["AP50"])
        details["segm_AP"] = _by_label(segm, label_of)

    dv = DVMeanAP(len(classes), **metrics.get("dv", {}))
    eir = ExactInferenceRate(classes, **metrics.get("plates", {}))
    by_image: dict[int, list[dict]] = {i: [] for i in gt.imgs}
    for r in results:
        by_image[r["image_id"]].append(r)
    if with_masks or eir.defined:
        for image_id, image in sorted(gt.imgs.items()):
            target = _as_detections(gt.imgToAnns.get(image_id, []), image, label_of, with_masks)
            pred = _as_detections(by_image[image_id], image, label_of, with_masks)
            if with_masks:
                dv.update([pred], [target])
            eir.update([pred], [target])
    if with_masks:
        dv_values = dv.compute()
        values.update({k: dv_values[k] for k in ("dv_mAP", "dv_mAP_50", "dv_mAP_75")})
        details["dv_AP"] = dv_values["details"]
    if not eir.defined:  # generic COCO data: no plates to read
        return make_report(values, classes, details, [], None)
    eir_values = eir.compute()
    values.update(EIR=finite_or_none(eir_values["EIR"]), plate_precision=eir_values["plate_precision"])
    return make_report(values, classes, details, eir_values["plates"], eir_values["counts"])


def _by_label(res: dict, label_of: dict[int, int]) -> dict:
    return {"per_class": {label_of[c]: ap for c, ap in res["per_class"].items()}}


def _strip_bbox(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "bbox"}
