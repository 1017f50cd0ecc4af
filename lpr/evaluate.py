"""Evaluation: ``python -m lpr.evaluate ckpt_path=...`` or ``gt=GT.json predictions=RESULTS.json``.

Both modes compute mAP and segm mAP (pycocotools), DV mAP and EIR, print a
table and write a JSON report (``report=PATH``) with per-class AP and the
plate list; the checkpoint mode also draws per-class PR curves.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from lightning import LightningDataModule
from omegaconf import DictConfig, OmegaConf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from lpr.checkpoint import CheckpointError, LoadedCheckpoint, load
from lpr.config_check import EVAL_RULES, clear_errors, instantiate_checked, validate_options
from lpr.data.coco import decode_segmentation
from lpr.data.validate import (
    ClassMismatchError,
    DataValidationError,
    class_names,
    is_number,
    load_coco_json,
    validate_coco,
)
from lpr.hardware import enlarge_onednn_cache
from lpr.metrics.coco import coco_evaluate, quiet
from lpr.metrics.detection import DVMeanAP, ExactInferenceRate
from lpr.metrics.eir import format_misses
from lpr.models.module import VAL_KEYS, MaskRCNNModule
from lpr.outputs import OutputError, make_dir, write_text
from lpr.zoom import set_zoom, settings

log = logging.getLogger("lpr.evaluate")


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


def _report(values: dict, classes: list[str], details: dict, plates: list[dict], counts: dict | None) -> dict:
    report: dict[str, Any] = {k: values.get(k) for k in VAL_KEYS}
    report["per_class"] = _per_class(classes, details)
    report["plate_counts"] = counts
    report["plates"] = plates
    return report


def _finite(v: Any) -> Any:
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
        return _report(values, classes, details, [], None)
    eir_values = eir.compute()
    values.update(EIR=_finite(eir_values["EIR"]), plate_precision=eir_values["plate_precision"])
    return _report(values, classes, details, eir_values["plates"], eir_values["counts"])


def _by_label(res: dict, label_of: dict[int, int]) -> dict:
    return {"per_class": {label_of[c]: ap for c, ap in res["per_class"].items()}}


def _strip_bbox(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "bbox"}


@torch.inference_mode()
def evaluate_checkpoint(
    ckpt_path: str,
    data_cfg: DictConfig | dict | None,
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    split: str = "val",
    classes: str = "all",
    zoom: bool | None = None,
) -> tuple[dict, dict]:
    """Run a checkpoint over a data set's validation split and compute every metric.

    Args:
        ckpt_path: an lpr checkpoint.
        data_cfg: a data module config (``_target_``...); None uses the one stored in the checkpoint.
        device: torch device for the forward passes.
        batch_size: overrides the data config's batch size.
        split: ``"val"``, or ``"val_heldout"`` for a data set with a held-out-style split.
        classes: ``"all"``: the data set's category names must be the checkpoint's class names (in
            any order, with any ids); ``"shared"``: score the classes both have, leave out the
            annotations of the others (the report lists what was left out under ``classes``).
        zoom: ``None`` reads small boards again as the model was configured (:mod:`lpr.zoom`),
            ``True`` also with a model configured without it, ``False`` in one pass; the report
            names the settings read with (``zoom``).

    Returns:
        ``(report, details)``: the JSON report and the metrics' raw details (PR arrays).

    Raises:
        ClassMismatchError: the names differ (with ``classes="shared"``: share none).
    """
    if classes not in ("all", "shared"):
        raise ValueError(f"classes must be all or shared, got {classes!r}")
    loaded = load(ckpt_path, map_location=device)
    set_zoom(loaded.model, loaded.classes, zoom)
    datamodule = validation_data(loaded, data_cfg, batch_size=batch_size, shared_classes=classes == "shared")
    loader = datamodule.split_dataloader(split)
    report, details = evaluate_module(loaded.module, loader, loaded.classes, device=device)
    report["zoom"] = settings(getattr(loaded.model, "zoom", None))
    if classes == "shared":
        in_data = [n for n in class_names(loader.dataset.coco) if n in loaded.classes]
        report["classes"] = {
            "scored": in_data,
            "not_in_model": loader.dataset.unscored_categories,  # their annotations were left out
            "not_in_data": [c for c in loaded.classes if c not in in_data],  # no ground truth, no AP
        }
    return report, details


def validation_data(
    loaded: LoadedCheckpoint,
    data_cfg: DictConfig | dict | None = None,
    *,
    batch_size: int | None = None,
    shared_classes: bool = False,
) -> LightningDataModule:
    """The data module a checkpoint is evaluated on, set up for validation.

    Args:
        loaded: the checkpoint.
        data_cfg: a data module config; None uses the one stored in the checkpoint.
        batch_size: overrides the data config's batch size.
        shared_classes: accept a data set whose names differ from the checkpoint's classes,
            leaving out the annotations of the categories the checkpoint lacks.

    Raises:
        ValueError: no data config.
        ClassMismatchError: the data set's category names are not the checkpoint's class names.
    """
    data_cfg = data_cfg if data_cfg is not None else loaded.config.get("data")
    if not data_cfg:
        raise ValueError(f"{loaded.path} stores no data config: pass data=... (e.g. data=plate)")
    data_cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(data_cfg), resolve=True))
    if batch_size:
        data_cfg.batch_size = batch_size
    # the data set's categories are matched to the checkpoint's classes by name, whatever their ids
    extra = {"shared_classes_only": True} if shared_classes else {}
    datamodule = instantiate_checked(data_cfg, _convert_="all", classes=list(loaded.classes), **extra)
    datamodule.prepare_data()
    try:
        datamodule.setup("validate")
    except ClassMismatchError as e:
        hint = "" if shared_classes else "; to score only the classes both have: classes=shared"
        raise ClassMismatchError(f"{e}{hint}") from None
    return datamodule


@torch.inference_mode()
def evaluate_module(
    module: MaskRCNNModule, loader: Iterable, classes: list[str], *, device: str = "cpu"
) -> tuple[dict, dict]:
    """Every metric of ``module`` (in eval mode) over the ``(images, targets)`` batches of ``loader``.

    Returns:
        ``(report, details)`` as :func:`evaluate_checkpoint`.
    """
    for metric in (module.val_map, module.val_dv, module.val_eir):
        metric.reset()
    for images, targets in loader:
        outputs = module([im.to(device) for im in images])
        module.update_metrics([{k: v.cpu() for k, v in o.items()} for o in outputs], targets)
    values: dict[str, Any] = {}
    computed = {}
    for name, metric in (("map", module.val_map), ("dv", module.val_dv), ("eir", module.val_eir)):
        computed[name] = metric.compute()
        values.update(computed[name])
    details = {
        "bbox_AP": computed["map"]["details"].get("bbox"),
        "segm_AP": computed["map"]["details"].get("segm"),
        "dv_AP": computed["dv"]["details"],
    }
    values["EIR"] = _finite(values["EIR"])
    report = _report(values, classes, details, computed["eir"]["plates"], computed["eir"]["counts"])
    return report, details


def write_pr_curves(details: dict, classes: list[str], out_dir: Path | None, log_dir: str | None) -> list[Path]:
    """Per-class precision/recall at IoU 0.5 (101 recall points): PNGs and/or TensorBoard PR curves."""
    written: list[Path] = []
    recall = np.linspace(0.0, 1.0, 101)
    writer = None
    if log_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir)
    plt = None
    if out_dir is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log.warning("matplotlib is not installed (pip install 'lpr[plots]'): no PR-curve PNGs")
        make_dir(out_dir)
    for kind, res in details.items():
        if res is None:
            continue
        precision = res["precision"][0]  # IoU 0.5: (R, K)
        for k, name in enumerate(classes):
            p = precision[:, k]
            if (p < 0).all():
                continue  # no ground truth of this class
            p = np.clip(p, 0, None)
            if writer is not None:
                zeros = np.zeros_like(p)
                writer.add_pr_curve_raw(f"pr_{kind}/{name}", zeros, zeros, zeros, zeros, p, recall, num_thresholds=101)
            if plt is not None:
                fig, ax = plt.subplots(figsize=(4, 3.2))
                ax.plot(recall, p)
                ax.set(
                    xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"{name} {kind} @ IoU 0.5"
                )
                path = out_dir / f"pr_{kind}_{name}.png"
                fig.tight_layout()
                try:
                    fig.savefig(path, dpi=80)
                except OSError as e:
                    raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
                finally:
                    plt.close(fig)
                written.append(path)
    if writer is not None:
        writer.close()
    return written


def run(cfg: DictConfig) -> dict:
    """The evaluation task behind the Hydra shell; returns the report."""
    enlarge_onednn_cache()
    metrics = OmegaConf.to_container(cfg.metrics, resolve=True) if cfg.get("metrics") else None
    if cfg.get("predictions"):
        if not cfg.get("gt"):
            raise ValueError("predictions=... needs gt=GT.json (the COCO ground truth)")
        report = evaluate_results(cfg.gt, cfg.predictions, metrics)
    elif cfg.get("ckpt_path"):
        validate_options(cfg, EVAL_RULES)
        report, details = evaluate_checkpoint(
            cfg.ckpt_path,
            cfg.get("data"),
            device=cfg.device,
            batch_size=cfg.get("batch_size"),
            split=cfg.split,
            classes=cfg.get("classes", "all"),
            zoom=cfg.get("zoom"),
        )
        pr_dir = Path(cfg.report).parent / "pr_curves" if cfg.get("pr_curves") else None
        classes = list(report["per_class"])
        written = write_pr_curves(details, classes, pr_dir, cfg.get("log_dir"))
        if written:
            log.info("PR curves: %s (%d PNG files)", pr_dir, len(written))
    else:
        raise ValueError("give ckpt_path=CKPT (optionally data=...), or gt=GT.json predictions=RESULTS.json")
    print_table(report)
    path = Path(cfg.report)
    make_dir(path.parent)
    write_text(path, json.dumps(report, indent=1, default=float))
    log.info("Report: %s", path)
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@clear_errors(EvaluationInputError, CheckpointError, DataValidationError, FileNotFoundError, OutputError, ValueError)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
