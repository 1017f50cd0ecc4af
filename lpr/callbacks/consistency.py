"""Model-consistency checks at setup: the heads, the backbone and the data agree."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from hydra.utils import get_method
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual
from torchvision.models.resnet import Bottleneck
from torchvision.ops import FeaturePyramidNetwork

from lpr.classes import ConsistencyError, check_classes
from lpr.models.backbones import mobilenet_v3_fpn, resnet50_fpn_v2
from lpr.plates import character_labels

# The block each backbone builder puts in the body: what the config promises is what was built.
BODY_BLOCKS = {mobilenet_v3_fpn: InvertedResidual, resnet50_fpn_v2: Bottleneck}


def check_heads(model: nn.Module, classes: Sequence[str]) -> None:
    """``cls_score``, ``bbox_pred`` and the mask logits must have ``len(classes) + 1`` classes, and a
    character reader must read the labels of the character classes."""
    n = len(classes) + 1
    heads = model.roi_heads
    sizes = {
        "roi_heads.box_predictor.cls_score": (heads.box_predictor.cls_score.out_features, n),
        "roi_heads.box_predictor.bbox_pred": (heads.box_predictor.bbox_pred.out_features, 4 * n),
        "roi_heads.mask_predictor.mask_fcn_logits": (heads.mask_predictor.mask_fcn_logits.out_channels, n),
    }
    for name, (got, want) in sizes.items():
        if got != want:
            raise ConsistencyError(
                f"{name} has {got} outputs but the class list needs {want} (len(classes) + 1 = {n}, "
                f"classes {list(classes)})"
            )
    reader = getattr(heads, "reader", None)
    if reader is not None and reader.char_labels.tolist() != character_labels(classes):
        raise ConsistencyError(
            f"the character reader reads labels {reader.char_labels.tolist()} but the character classes of "
            f"{list(classes)} have labels {character_labels(classes)}"
        )


def check_backbone(model: nn.Module, net_cfg: dict) -> None:
    """The body's block type, FPN type, level count and width must match ``net.backbone`` in the config."""
    cfg = net_cfg.get("backbone", {})
    target = cfg.get("_target_")
    backbone = model.backbone
    expected_block = BODY_BLOCKS.get(get_method(target)) if target else None
    if expected_block is not None and not any(isinstance(m, expected_block) for m in backbone.body.modules()):
        found = sorted({type(m).__name__ for m in backbone.body.children()})
        raise ConsistencyError(
            f"the config asks for backbone {target} ({expected_block.__name__} blocks) but the model's body has {found}"
        )
    if not isinstance(getattr(backbone, "fpn", None), FeaturePyramidNetwork):
        raise ConsistencyError(f"the backbone has no FeaturePyramidNetwork neck (found {type(backbone).__name__})")
    levels = len(backbone.fpn.inner_blocks)
    if "returned_layers" in cfg and levels != len(cfg["returned_layers"]):
        raise ConsistencyError(
            f"the FPN has {levels} input levels but the config's returned_layers {cfg['returned_layers']} "
            f"give {len(cfg['returned_layers'])}"
        )
    if "out_channels" in cfg and backbone.out_channels != cfg["out_channels"]:
        raise ConsistencyError(
            f"the FPN has {backbone.out_channels} channels but the config says out_channels={cfg['out_channels']}"
        )


class ConsistencyCheck(Callback):
    """Fails fast when the model, its config, the data and a resumed checkpoint disagree.

    At ``setup`` of fit/validate/test/predict it checks: head sizes vs
    ``len(classes) + 1``; backbone and FPN types vs the model config; every
    split's categories vs the data module's class list and the model's. On
    resume, the checkpoint's classes are checked against the model's by
    :meth:`lpr.models.module.MaskRCNNModule.on_load_checkpoint`, before any
    weight is loaded (Lightning restores checkpoints after ``setup``).

    Raises:
        ConsistencyError: naming both sides of the first mismatch found.

    Example:
        >>> trainer = Trainer(callbacks=[ConsistencyCheck()])
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        classes = list(pl_module.hparams["classes"])
        check_heads(pl_module.model, classes)
        check_backbone(pl_module.model, pl_module.hparams.get("net", {}))
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "classes"):
            for split in (getattr(datamodule, "train_set", None), getattr(datamodule, "val_set", None)):
                if split is not None:
                    check_classes(
                        datamodule.classes,
                        split.classes,
                        expected_from="the data module",
                        found_from=f"{split.ann_file}",
                    )
            check_classes(classes, datamodule.classes, expected_from="the model", found_from="the data set")
