"""Mask R-CNN assembled from its parts, each configured on its own (``conf/model/``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from lpr.models.backbones import BackboneWithImage
from lpr.models.char_reader import CharReader
from lpr.models.heads import Branch, LevelRPN
from lpr.models.roi_heads import ReadingRoIHeads
from lpr.models.transform import DetectionTransform


def build_maskrcnn(
    *,
    num_classes: int,
    backbone: BackboneWithFPN,
    transform: DetectionTransform,
    rpn: Callable[..., LevelRPN],
    box_head: Callable[..., Branch],
    mask_head: Callable[..., Branch],
    roi_heads: Callable[..., ReadingRoIHeads],
    char_reader: Callable[..., CharReader] | None = None,
    char_labels: Sequence[int] | None = None,
) -> GeneralizedRCNN:
    """Mask R-CNN from its parts: the parts built here are completed with the sizes that follow
    from the others (the FPN's channels and map names, the number of classes).

    Args:
        num_classes: classes including background, i.e. ``len(classes) + 1``.
        backbone: a body + FPN (:func:`lpr.models.backbones.mobilenet_v3_fpn`,
            :func:`~lpr.models.backbones.resnet50_fpn_v2`), maps named ``"0"``, ``"1"``, ... plus ``"pool"``.
        transform: resize, normalisation and training windows (:class:`~lpr.models.transform.DetectionTransform`).
        rpn: ``(in_channels, featmap_names) -> RPN`` (:func:`lpr.models.heads.rpn`).
        box_head: ``(in_channels, featmap_names, num_classes) -> Branch`` (:func:`lpr.models.heads.box_branch`).
        mask_head: the same for the masks (:func:`~lpr.models.heads.mask_branch`,
            :func:`~lpr.models.heads.pixel_mask_branch`).
        roi_heads: ``(box, mask, reader) -> RoI heads`` with the sampling and inference settings
            (:class:`lpr.models.roi_heads.ReadingRoIHeads`).
        char_reader: ``(char_labels) -> CharReader`` that names the character boxes from their
            pixels (:class:`lpr.models.char_reader.CharReader`); ``None``: the box classifier names them.
        char_labels: the labels of the character classes, required with ``char_reader``
            (:class:`lpr.models.module.MaskRCNNModule` passes them from the class names).

    Returns:
        torchvision's ``GeneralizedRCNN`` (the class of its ``MaskRCNN``), taking a list of float
        CHW images in [0, 1] (and targets in training).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts background, so it must be >= 2, got {num_classes}")
    featmap_names = list(backbone.body.return_layers.values())
    channels = backbone.out_channels
    reader = None if char_reader is None else char_reader(char_labels or [])  # CharReader refuses no labels
    heads = roi_heads(
        box_head(channels, featmap_names, num_classes),
        mask_head(channels, featmap_names, num_classes),
        reader,
    )
    # the heads that read pixels (the reader, a pixel mask branch) find the input among the features
    return GeneralizedRCNN(BackboneWithImage(backbone), rpn(channels, featmap_names), heads, transform)
