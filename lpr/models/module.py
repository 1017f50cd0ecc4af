"""The LightningModule: torchvision Mask R-CNN, its losses, optimizer and schedule."""

from __future__ import annotations

import copy
import logging
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from lpr.classes import check_classes
from lpr.metrics.detection import CocoMAP, DVMeanAP, ExactInferenceRate
from lpr.metrics.eir import format_misses
from lpr.plates import BOARD_TYPES, character_labels, letter_labels
from lpr.zoom import board_labels

log = logging.getLogger(__name__)

# torchvision's five losses, and loss_reader when the model has a character reader
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg", "loss_reader")
VAL_KEYS = ("mAP", "mAP_50", "segm_mAP", "segm_mAP_50", "dv_mAP", "dv_mAP_50", "dv_mAP_75", "EIR", "plate_precision")
# The validation loaders' key prefixes, in loader order: the data set's own validation split, then the
# split drawn in styles held out of training (lpr.data.datamodule.CocoDataModule.heldout_json).
VAL_PREFIXES = ("val", "val_heldout")
# every key the module logs (checkpoint.monitor may name any key a run's objects declare so)
MODULE_KEYS = (
    "train/loss",
    "train/lr",
    "data/skipped_images",
    *(f"train/{k}" for k in LOSS_KEYS),
    *(f"{prefix}/{k}" for prefix in VAL_PREFIXES for k in VAL_KEYS),
)


def _without_crowd(target: dict) -> dict:
    """torchvision's losses know no crowd regions: train on the other instances only."""
    crowd = target.get("iscrowd")
    if crowd is None or not crowd.any():
        return target
    keep = ~crowd
    return {k: v[keep] if k in ("boxes", "labels", "masks", "iscrowd") else v for k, v in target.items()}


def plain(value: Any) -> Any:
    """A private plain copy: OmegaConf containers become dicts/lists (``weights_only``-loadable
    hyperparameters), and a caller's dict is not shared with the module."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return copy.deepcopy(value)


class MaskRCNNModule(L.LightningModule):
    """Mask R-CNN for plates: the network is built from ``net`` with ``len(classes) + 1`` outputs.

    What it offers callbacks (:class:`lpr.callbacks.memory.SkipsWork`): :meth:`skip_training_batch`,
    :meth:`skip_validation_round` and :attr:`validation_round_skipped`; and ``LOGGED_KEYS``, every
    key it logs.

    Args:
        classes: class names in label order (label ``i + 1`` is ``classes[i]``),
            taken from the data set, never written in config.
        net: ``_target_`` config of the network builder (e.g.
            :func:`lpr.models.maskrcnn.build_maskrcnn`); ``num_classes`` is added here.
        optimizer: ``_target_`` config of a ``torch.optim`` optimizer
            (``params`` is added here; norm and bias parameters get no weight decay).
        scheduler: ``_target_`` config of a schedule taking ``(optimizer, total_steps=...)``
            (see :mod:`lpr.models.schedules`), stepped every optimizer step; ``None`` for none.
        metrics: validation metric settings: ``{"dv": {k, min_points}, "plates": {score_thr,
            char_nms_iou, sub_pattern, main_pattern, width_ratio, height_ratio}}`` (defaults
            of docs/metrics.md for anything left out).
        channels_last: keep the network's weights in NHWC, so that oneDNN's convolutions run
            channels-last (1.2-1.4x faster fp32 training steps on a CPU, docs/recipe.md); weights
            and checkpoints are the same either way.

    Example:
        >>> optimizer = {"_target_": "torch.optim.AdamW", "lr": 1e-3}
        >>> module = MaskRCNNModule(classes=["0", "1"], net=net_cfg, optimizer=optimizer)
    """

    LOGGED_KEYS = MODULE_KEYS

    def __init__(
        self,
        classes: list[str],
        net: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        metrics: dict | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        classes, net, optimizer, scheduler = plain(classes), plain(net), plain(optimizer), plain(scheduler)
        metrics = plain(metrics) or {}
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be a non-empty list of unique names, got {classes}")
        self.save_hyperparameters()
        self.classes: list[str] = list(classes)
        # a character reader (lpr.models.char_reader) is told which labels are characters; the rest of the
        # network only needs the number of classes
        extra = {}
        if net.get("char_reader") is not None:
            extra["char_labels"], extra["letter_labels"] = character_labels(classes), letter_labels(classes)
            if not extra["char_labels"]:
                raise ValueError(
                    f"model.net.char_reader reads characters, but the class list {classes} has no character "
                    "class (single-character names); set model.net.char_reader=null"
                )
        if net.get("zoom") is not None:
            extra["board_labels"] = board_labels(classes)
            if not extra["board_labels"]:
                raise ValueError(
                    f"model.net.zoom reads small boards again, but the class list {classes} has no board class "
                    f"({', '.join(BOARD_TYPES)}); set model.net.zoom=null"
                )
        self.model = instantiate(net, num_classes=len(classes) + 1, **extra, _convert_="all")
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.val_map = CocoMAP(len(classes))
        self.val_dv = DVMeanAP(len(classes), **metrics.get("dv", {}))
        self.val_eir = ExactInferenceRate(classes, **metrics.get("plates", {}))
        # the same metrics for a second validation loader (held-out styles), logged as val_heldout/...
        self.heldout_map = CocoMAP(len(classes))
        self.heldout_dv = DVMeanAP(len(classes), **metrics.get("dv", {}))
        self.heldout_eir = ExactInferenceRate(classes, **metrics.get("plates", {}))
        self._last_eir_counts: dict | None = None
        self._skip_batch = False
        self._skip_val_round = False
        self._skipped_images = 0  # unreadable images left out of training batches

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """On resume (``ckpt_path``): the checkpoint must be for this class list, checked before loading weights."""
        stored = checkpoint.get("lpr", {}).get("classes") or checkpoint.get("hyper_parameters", {}).get("classes")
        if stored is not None:
            source = f"checkpoint {self.trainer.ckpt_path}" if self._trainer is not None else "the checkpoint"
            check_classes(stored, self.classes, expected_from=source, found_from="this run's model/data set")

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections for float CHW images in [0, 1]: dicts of ``boxes`` (xyxy), ``labels``, ``scores``,
        ``masks`` (``(N, 1, H, W)`` float probabilities)."""
        return self.model(images)

    def skip_training_batch(self) -> None:
        """Skip the next training batch entirely: no forward, backward or optimizer step (used by MemoryGuard)."""
        self._skip_batch = True

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self._skip_batch and self.trainer.training:
            self._skip_batch = False
            return None  # Lightning skips a None batch without stepping the optimizer
        if batch is not None and self.trainer.training:
            self._skipped_images += getattr(batch[0], "skipped", 0)  # read before the transfer drops it
        return batch

    def skip_validation_round(self) -> None:
        """Ignore the rest of this validation round; its metrics are not logged (used by MemoryGuard)."""
        self._skip_val_round = True

    @property
    def validation_round_skipped(self) -> bool:
        return self._skip_val_round

    def training_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, [_without_crowd(t) for t in targets])
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise FloatingPointError(
                f"non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}): {detail}. Lower model.optimizer.lr or lengthen the warm-up."
            )
        batch_size = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for key, value in losses.items():
            self.log(f"train/{key}", value, batch_size=batch_size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        if self._skipped_images:
            self.log("data/skipped_images", float(self._skipped_images), batch_size=batch_size)
        return loss

    def validation_step(
        self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict] | None:
        if self._skip_val_round:
            return None
        images, targets = batch
        # Full precision even under a mixed-precision trainer: the metrics then see what
        # lpr.evaluate and lpr.predict (which run in float32) see.
        with torch.autocast(self.device.type, enabled=False):
            outputs = self.model(images)
        self.update_metrics(outputs, targets, split=dataloader_idx)
        return outputs

    def _metrics(self, split: int) -> tuple[CocoMAP, DVMeanAP, ExactInferenceRate]:
        """The metric objects of validation loader ``split`` (0: val, 1: val_heldout)."""
        if split == 0:
            return self.val_map, self.val_dv, self.val_eir
        if split == 1:
            return self.heldout_map, self.heldout_dv, self.heldout_eir
        raise ValueError(f"lpr validates on at most {len(VAL_PREFIXES)} loaders {VAL_PREFIXES}, got loader {split}")

    def update_metrics(self, outputs: list[dict], targets: list[dict], split: int = 0) -> None:
        """Feed one validation batch's detections and ground truth to the metrics of loader ``split``."""
        preds = [{**o, "masks": (o["masks"] >= 0.5).to(torch.uint8)} for o in outputs]  # binarise once
        for metric in self._metrics(split):
            metric.update(preds, targets)

    def compute_metrics(self, split: int = 0) -> dict[str, float | None]:
        """All validation metrics of loader ``split`` (synced across ranks), then reset for the next round."""
        values: dict = {}
        for metric in self._metrics(split):
            values.update(metric.compute())
            metric.reset()
        self._last_eir_counts = values.get("counts")
        return {k: values[k] for k in VAL_KEYS}

    def _validated_splits(self) -> range:
        loaders = self.trainer.val_dataloaders
        return range(len(loaders) if isinstance(loaders, list | tuple) else 1)

    def on_validation_epoch_end(self) -> None:
        splits = self._validated_splits()
        if self.trainer.sanity_checking or self._skip_val_round:
            if self._skip_val_round:
                log.warning("validation round at step %d skipped: no metrics logged for it", self.global_step)
            self._skip_val_round = False
            for split in splits:
                for metric in self._metrics(split):
                    metric.reset()
            return
        for split in splits:
            values = self.compute_metrics(split)
            for key, value in values.items():
                if value is not None:
                    # one value for the whole round: nothing to average, so no batch size to guess from the last batch
                    self.log(f"{VAL_PREFIXES[split]}/{key}", float(value), batch_size=1)
            self._print_summary(values, VAL_PREFIXES[split])

    @rank_zero_only
    def _print_summary(self, values: dict[str, float | None], prefix: str = "val") -> None:
        def fmt(key: str) -> str:
            v = values[key]
            return f"{key} {v:.4f}" if v is not None else f"{key} -"

        counts = self._last_eir_counts or {}
        plates = (
            f" ({counts['matched']}/{counts['gt']} plates; {counts['pred']} read; "
            f"{counts['gt_unreadable']} unreadable GT boards)"
            if counts
            else ""
        )
        misses = f"\n  {format_misses(counts['missed'])}" if counts.get("missed") else ""
        # in fit: "validation at epoch 3, step 750"; a trainer.validate() after fit is the final, full one
        when = "validation at" if self.trainer.state.fn == TrainerFn.FITTING else "validation (Trainer.validate) after"
        when = when if prefix == "val" else f"{prefix}: {when}"
        log.info(
            "%s epoch %d, step %d\n  %s\n  %s\n  %s%s | %s%s",
            when,
            self.current_epoch + (1 if self.trainer.state.fn == TrainerFn.FITTING else 0),
            self.global_step,
            "  ".join(fmt(k) for k in ("mAP", "mAP_50", "segm_mAP", "segm_mAP_50")),
            "  ".join(fmt(k) for k in ("dv_mAP", "dv_mAP_50", "dv_mAP_75")),
            fmt("EIR"),
            plates,
            fmt("plate_precision"),
            misses,
        )

    def predict_step(self, batch: Any, batch_idx: int) -> list[dict]:
        images = batch[0] if isinstance(batch, tuple | list) and isinstance(batch[0], list) else batch
        return self.model(images)

    def configure_optimizers(self) -> dict:
        decayed, not_decayed = [], []  # norm and bias parameters get no weight decay
        for module in self.model.modules():
            is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
            for name, param in module.named_parameters(recurse=False):
                if param.requires_grad:
                    (not_decayed if is_norm or name == "bias" else decayed).append(param)
        params = [{"params": decayed}, {"params": not_decayed, "weight_decay": 0.0}]  # train/lr logs group 0
        optimizer = instantiate(self.hparams.optimizer, params=[g for g in params if g["params"]], _convert_="all")
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        scheduler = instantiate(
            self.hparams.scheduler,
            optimizer=optimizer,
            total_steps=int(self.trainer.estimated_stepping_batches),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
