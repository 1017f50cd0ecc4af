"""Evaluation: ``python -m lpr.evaluate ckpt_path=...`` or ``gt=GT.json predictions=RESULTS.json``.

Both modes compute mAP and segm mAP (pycocotools), DV mAP and EIR, print a
table and write a JSON report (``report=PATH``) with per-class AP and the
plate list; the checkpoint mode also draws per-class PR curves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from lightning import LightningDataModule
from omegaconf import DictConfig, OmegaConf

from lpr.checkpoint import CheckpointError, LoadedCheckpoint, load
from lpr.config_check import EVAL_RULES, clear_errors, instantiate_checked, validate_options
from lpr.data.validate import ClassMismatchError, DataValidationError, class_names
from lpr.hardware import enlarge_onednn_cache
from lpr.models.module import MaskRCNNModule
from lpr.outputs import OutputError, make_dir, write_text
from lpr.scoring import EvaluationInputError, evaluate_results, finite_or_none, make_report, print_table
from lpr.zoom import set_zoom, settings

log = logging.getLogger("lpr.evaluate")


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
    values["EIR"] = finite_or_none(values["EIR"])
    report = make_report(values, classes, details, computed["eir"]["plates"], computed["eir"]["counts"])
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
