"""Metrics: DV IoU by hand, COCO against the official answers, EIR and the metric classes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import SHARED_TESTDATA
from pycocotools.coco import COCO

from lpr.data import CocoInstances
from lpr.data.synth import PLATE_CLASSES
from lpr.metrics.coco import STAT_NAMES, coco_evaluate, quiet
from lpr.metrics.detection import CocoMAP, DVMeanAP, ExactInferenceRate
from lpr.metrics.dv import boundary_polygon, dv_iou, dv_iou_matrix, mask_dv_iou, mask_slices, slice_boxes
from lpr.metrics.eir import MISSES
from lpr.scoring import evaluate_results

COCO_DIR = SHARED_TESTDATA / "coco"
needs_coco = pytest.mark.skipif(
    not (COCO_DIR / "expected_stats.json").is_file(), reason=f"outside test data not found at {COCO_DIR}"
)


# ----------------------------------------------------------------- DV IoU by hand


def _mask(shape=(60, 60)):
    return np.zeros(shape, np.uint8)


def test_slice_boxes_chunks_and_remainder():
    pts = np.stack([np.arange(31), np.zeros(31, int)], axis=1)  # x = 0..30 on a line
    boxes = slice_boxes(pts, k=3, min_points=10)
    # by x: chunks of 31 // 3 = 10 points, the last takes 11
    assert boxes[:3].tolist() == [[0, 0, 9, 0], [10, 0, 19, 0], [20, 0, 30, 0]]
    assert boxes[3:].tolist() == boxes[:3].tolist()  # all y equal: the stable sort keeps x order
    assert slice_boxes(pts[:29], k=3, min_points=10) is None  # 29 < 3 * 10


def test_boundary_polygon_takes_the_largest_contour():
    m = _mask()
    m[5:10, 5:10] = 1
    m[20:50, 20:40] = 1
    pts = boundary_polygon(m)
    assert pts[:, 0].min() == 20 and pts[:, 0].max() == 39 and pts[:, 1].min() == 20 and pts[:, 1].max() == 49
    assert len(boundary_polygon(_mask())) == 0


def test_dv_iou_identical_is_one():
    m = _mask()
    cv2.circle(m, (30, 30), 15, 1, -1)
    pts = boundary_polygon(m)
    assert dv_iou([15, 15, 46, 46], pts, [15, 15, 46, 46], pts) == 1.0


def test_dv_iou_same_box_different_shape_is_low():
    box = [10, 10, 40, 50]
    full = _mask()
    full[10:50, 10:40] = 1  # a filled block ...
    ell = _mask()
    ell[10:50, 10:16] = 1  # ... and an "L" with the same box
    ell[44:50, 10:40] = 1
    a, b = boundary_polygon(full), boundary_polygon(ell)
    assert dv_iou(box, a, box, b) < 0.5  # box IoU alone would say 1.0


def test_dv_iou_tiny_polygon_is_zero():
    m = _mask()
    m[10:13, 10:13] = 1  # 8 boundary points < 3 * 10
    big = _mask()
    big[10:40, 10:40] = 1
    assert dv_iou([10, 10, 13, 13], boundary_polygon(m), [10, 10, 13, 13], boundary_polygon(big)) == 0.0
    assert dv_iou([10, 10, 13, 13], boundary_polygon(m), [10, 10, 13, 13], boundary_polygon(m)) == 0.0


def test_union_zero_gives_one_and_crowd_uses_prediction_area():
    point = np.array([[5.0, 5.0, 5.0, 5.0]])
    slices = np.repeat(point[:, None], 6, axis=1)
    ok = np.ones(1, bool)
    assert dv_iou_matrix(point, slices, ok, point, slices, ok)[0, 0] == 1.0
    pred = np.array([[0.0, 0, 10, 10]])
    crowd = np.array([[0.0, 0, 100, 100]])
    ps, cs = np.repeat(pred[:, None], 6, 1), np.repeat(crowd[:, None], 6, 1)
    assert dv_iou_matrix(pred, ps, ok, crowd, cs, ok)[0, 0] == pytest.approx(0.01)
    assert dv_iou_matrix(pred, ps, ok, crowd, cs, ok, np.array([True]))[0, 0] == 1.0


def test_mask_slices_sees_mask_spilling_past_its_box():
    m = _mask()
    m[10:50, 10:40] = 1
    assert np.array_equal(mask_slices(m, np.array([12, 12, 38, 48])), mask_slices(m, None))


# ----------------------------------------------------------------- COCO, official answers


@needs_coco
@pytest.mark.parametrize(
    ("name", "gt", "kind", "results"),
    [
        (
            "cocoapi_val2014_100",
            "instances_val2014_100.json",
            "bbox",
            "instances_val2014_fakebbox100_results.json",
        ),
        (
            "cocoapi_val2014_100",
            "instances_val2014_100.json",
            "segm",
            "instances_val2014_fakesegm100_results.json",
        ),
        ("detectron2_small", "gt.json", "bbox", "dt.json"),
        ("detectron2_small", "gt.json", "segm", "dt.json"),
    ],
)
def test_coco_evaluate_reproduces_the_official_stats(name, gt, kind, results):
    expected = json.loads((COCO_DIR / "expected_stats.json").read_text())[f"{name}/{kind}"]
    with quiet():
        coco = COCO(str(COCO_DIR / name / gt))
    stats = coco_evaluate(coco, json.loads((COCO_DIR / name / results).read_text()), kind)["stats"]
    assert [stats[k] for k in STAT_NAMES] == pytest.approx(expected, abs=1e-6)


@needs_coco
def test_evaluate_results_mode_gives_official_map_and_null_mask_metrics():
    base = COCO_DIR / "cocoapi_val2014_100"
    expected = json.loads((COCO_DIR / "expected_stats.json").read_text())
    boxes = evaluate_results(
        str(base / "instances_val2014_100.json"), str(base / "instances_val2014_fakebbox100_results.json")
    )
    assert boxes["mAP"] == pytest.approx(0.504581, abs=1e-6)
    assert boxes["mAP"] == pytest.approx(expected["cocoapi_val2014_100/bbox"][0], abs=1e-12)
    assert boxes["segm_mAP"] is None and boxes["dv_mAP"] is None
    assert boxes["EIR"] is None and boxes["plate_precision"] is None  # no plate classes in COCO
    masks = evaluate_results(
        str(base / "instances_val2014_100.json"), str(base / "instances_val2014_fakesegm100_results.json")
    )
    assert masks["segm_mAP"] == pytest.approx(0.319545, abs=1e-6)
    assert masks["mAP"] is not None  # boxes derived from the masks
    assert 0.0 < masks["dv_mAP"] < masks["segm_mAP"]
    assert masks["per_class"]["person"]["segm_AP"] is not None


# ----------------------------------------------------------------- metric classes on plate data


def _perfect(dataset: CocoInstances) -> tuple[list[dict], list[dict]]:
    preds, targets = [], []
    for i in range(len(dataset)):
        _, t = dataset[i]
        n = len(t["labels"])
        preds.append(
            {
                "boxes": t["boxes"],
                "labels": t["labels"],
                "scores": torch.linspace(1.0, 0.9, n),
                "masks": t["masks"][:, None].float(),
            }
        )
        targets.append(t)
    return preds, targets


@pytest.fixture(scope="module")
def val_set(synth_dir):
    return CocoInstances(synth_dir / "val.json", synth_dir / "images")


def test_perfect_predictions_score_one(val_set):
    preds, targets = _perfect(val_set)
    coco = CocoMAP(len(PLATE_CLASSES))
    dv = DVMeanAP(len(PLATE_CLASSES))
    eir = ExactInferenceRate(PLATE_CLASSES)
    for metric in (coco, dv, eir):
        metric.update(preds, targets)
    m = coco.compute()
    assert m["mAP"] == pytest.approx(1.0) and m["segm_mAP"] == pytest.approx(1.0)
    d = dv.compute()
    # only instances too small to divide (< 30 boundary points: a third of the synthetic characters are under
    # 12 px tall) are lost; the boards always divide
    assert d["dv_mAP"] > 0.6
    for board in ("l_board", "r_board"):
        assert d["details"]["per_class"][PLATE_CLASSES.index(board) + 1] in (1.0, -1.0)
    e = eir.compute()
    assert e["EIR"] == 1.0 and e["plate_precision"] == 1.0
    assert e["counts"]["gt"] == sum(1 for t in targets for lab in t["labels"] if lab in (16, 17))
    assert all(row["matched"] and row["gt"] == row["read"] for row in e["plates"])


def test_one_misread_digit_and_a_duplicate_board(val_set):
    preds, targets = _perfect(val_set)
    eir = ExactInferenceRate(PLATE_CLASSES)
    eir.update(preds, targets)
    n = eir.compute()["counts"]["gt"]
    i = next(i for i, p in enumerate(preds) if (p["labels"] == 16).any() or (p["labels"] == 17).any())
    labels = preds[i]["labels"].clone()
    first_digit = int(torch.nonzero(labels <= 10)[0])
    labels[first_digit] = labels[first_digit] % 10 + 1  # another digit
    board = int(torch.nonzero((labels == 16) | (labels == 17))[0])
    bad = dict(preds[i], labels=labels)
    # the same board detected twice: one reading can match, the other only lowers precision
    for key in ("boxes", "labels", "scores", "masks"):
        bad[key] = torch.cat([bad[key], bad[key][board : board + 1]])
    eir = ExactInferenceRate(PLATE_CLASSES)
    eir.update([*preds[:i], bad, *preds[i + 1 :]], targets)
    e = eir.compute()
    assert e["counts"]["gt"] == n
    assert e["counts"]["matched"] == n - 1  # the misread digit breaks the plate it belongs to
    assert e["counts"]["pred"] == n + 1
    assert e["EIR"] == e["counts"]["matched"] / n
    assert e["plate_precision"] == pytest.approx(e["counts"]["matched"] / (n + 1))
    assert e["counts"]["missed"] == {**dict.fromkeys(MISSES, 0), "misread": 1}
    assert [row["miss"] for row in e["plates"] if not row["matched"]] == ["misread"]


def test_an_image_seen_twice_counts_once(val_set):
    """DDP samplers pad by repeating images: the record of an image id is kept once."""
    preds, targets = _perfect(val_set)
    preds[0] = {k: v[:0] for k, v in preds[0].items()}  # image 0: no detections at all
    once, twice = CocoMAP(len(PLATE_CLASSES)), CocoMAP(len(PLATE_CLASSES))
    once.update(preds, targets)
    twice.update(preds, targets)
    twice.update(preds[:2], targets[:2])
    assert once.compute()["mAP"] == twice.compute()["mAP"] < 1.0


def test_a_module_holding_metrics_mid_round_can_be_walked(val_set):
    """Between update and compute the records are dicts: moving or averaging the module (``.cpu()`` at a
    Trainer's teardown, a weight-averaging callback's ``parameters()``) must still walk its tree."""
    preds, targets = _perfect(val_set)
    module = torch.nn.Module()
    module.coco, module.dv = CocoMAP(len(PLATE_CLASSES)), DVMeanAP(len(PLATE_CLASSES))
    module.eir, module.eir_again = ExactInferenceRate(PLATE_CLASSES), ExactInferenceRate(PLATE_CLASSES)
    for metric in (module.coco, module.dv, module.eir, module.eir_again):
        metric.update(preds[:2], targets[:2])
    assert len(list(module.modules())) == 5  # two metrics in the same state are still two modules
    module.cpu()
    assert module.eir.compute()["counts"]["gt"] == module.eir_again.compute()["counts"]["gt"] > 0


def test_mask_dv_iou_is_dv_iou_of_the_masks_boundary_polygons():
    gt = np.zeros((40, 50), np.uint8)
    gt[5:30, 10:22] = 1
    pred = np.zeros_like(gt)
    pred[6:31, 11:22] = 1
    gt_box, pred_box = np.array([10.0, 5.0, 22.0, 30.0]), np.array([11.0, 6.0, 22.0, 31.0])
    expected = dv_iou(pred_box, boundary_polygon(pred), gt_box, boundary_polygon(gt))
    assert 0 < expected < 1
    assert mask_dv_iou(pred, pred_box, gt, gt_box) == pytest.approx(expected)
    assert mask_dv_iou(gt, gt_box, gt, gt_box) == pytest.approx(1.0)
    assert mask_dv_iou(np.zeros_like(gt), pred_box, gt, gt_box) == 0.0
