"""Mask R-CNN assembled from its parts, each configured on its own (``conf/model/``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from lpr.models.backbones import BackboneWithImage
from lpr.models.char_reader import CharReader
from lpr.models.heads import Branch, LevelRPN
from lpr.models.roi_heads import ReadingRoIHeads
from lpr.models.transform import DetectionTransform, crop_target
from lpr.zoom import BoardZoom


class PlateMaskRCNN(GeneralizedRCNN):
    """torchvision's ``GeneralizedRCNN`` that, in eval mode and with ``zoom``, reads small boards a
    second time on an enlarged window of the image (:class:`lpr.zoom.BoardZoom`): the second pass's
    regions and characters replace the first's on each such board. The weights are the same: a
    checkpoint loads with or without ``zoom``.

    ``train_zoom``: in training, this share of the images that hold a small board are replaced by
    the window the second look would read one of them on (drawn at random), so that the model
    learns the enlarged, blurred boards it reads there; their objects are those mostly inside
    (:func:`lpr.models.transform.crop_target`). ``0``: training sees the images as they are.
    """

    def __init__(self, *args, zoom: BoardZoom | None = None, train_zoom: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= train_zoom <= 1:
            raise ValueError(f"train_zoom is a share of the training images, in [0, 1], got {train_zoom}")
        if train_zoom and zoom is None:
            raise ValueError("train_zoom trains on the second look's windows, which need a zoom")
        self.zoom = zoom
        self.train_zoom = train_zoom

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and self.train_zoom and self.zoom is not None and targets is not None:
            images, targets = self.zoomed(images, targets)
        outputs = super().forward(images, targets)
        if self.training or self.zoom is None:
            return outputs
        plans = []  # (image index, board index, window)
        for i, (image, out) in enumerate(zip(images, outputs, strict=True)):
            boxes, labels, scores = (_numpy(out[k]) for k in ("boxes", "labels", "scores"))
            height, width = image.shape[-2:]
            scale = self.transform.scale(height, width)
            plans += [(i, b, w) for b, w in self.zoom.windows(boxes, labels, scores, width, height, scale)]
        if not plans:
            return outputs
        seconds = super().forward([images[i][:, y1:y2, x1:x2] for i, _, (x1, y1, x2, y2) in plans])
        for i, out in enumerate(outputs):
            looks = [(b, w, second) for (j, b, w), second in zip(plans, seconds, strict=True) if j == i]
            if looks:
                outputs[i] = self._merge(out, looks, images[i].shape[-2:])
        return outputs

    def zoomed(
        self, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        """The training images, each holding a small board replaced by the second look's window on
        one of them with probability ``train_zoom`` (the windows of the true boards, as
        :meth:`lpr.zoom.BoardZoom.windows` chooses them for detections)."""
        images, targets = list(images), list(targets)
        for i, (image, target) in enumerate(zip(images, targets, strict=True)):
            if float(torch.rand(())) >= self.train_zoom:
                continue
            height, width = image.shape[-2:]
            labels = _numpy(target["labels"])
            scale = self.transform.scale(height, width)
            windows = self.zoom.windows(_numpy(target["boxes"]), labels, np.ones(len(labels)), width, height, scale)
            if windows:
                x1, y1, x2, y2 = windows[int(torch.randint(len(windows), ()))][1]
                images[i], targets[i] = image[:, y1:y2, x1:x2], crop_target(target, (x1, y1, x2, y2))
        return images, targets

    def _merge(self, first: dict[str, Tensor], looks: list, size: torch.Size) -> dict[str, Tensor]:
        """``first`` (one image's detections) with those on each looked-at board replaced by the second
        look's: ``looks`` holds ``(board index, window, detections in the window's pixels)``."""
        keep = torch.ones(len(first["labels"]), dtype=torch.bool)
        parts: dict[str, list[Tensor]] = {key: [] for key in first}
        boxes, labels = _numpy(first["boxes"]), _numpy(first["labels"])
        for board, (x1, y1, x2, y2), second in looks:
            moved = second["boxes"] + second["boxes"].new_tensor([x1, y1, x1, y1])
            take = self.zoom.taken(boxes[board], int(labels[board]), _numpy(moved), _numpy(second["labels"]))
            if take is None:  # the second look did not find the board: the first reading stays
                continue
            keep &= torch.from_numpy(~self.zoom.replaced(board, boxes, labels))
            take = torch.from_numpy(take).to(moved.device)
            for key in first:
                extra = moved[take] if key == "boxes" else second[key][take]
                if key == "masks":  # pasted into the window: into the whole image
                    full = extra.new_zeros((*extra.shape[:-2], *size))
                    full[..., y1:y2, x1:x2] = extra
                    extra = full
                parts[key].append(extra)
        keep = keep.to(first["labels"].device)
        merged = {key: torch.cat([value[keep], *parts[key]]) for key, value in first.items()}
        order = torch.argsort(merged["scores"], descending=True, stable=True)
        return {key: value[order] for key, value in merged.items()}


def _numpy(t: Tensor):
    return t.detach().cpu().numpy()


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
    letter_labels: Sequence[int] | None = None,
    zoom: Callable[..., BoardZoom] | None = None,
    board_labels: Sequence[int] | None = None,
    train_zoom: float = 0.0,
) -> PlateMaskRCNN:
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
        letter_labels: those of them that are letters, for the reader's ``letter_weight`` (passed as
            ``char_labels`` are).
        zoom: ``(board_labels) -> BoardZoom``: read small boards again, enlarged, at inference
            (:class:`lpr.zoom.BoardZoom`); ``None``: one pass.
        board_labels: the labels of the board classes, required with ``zoom`` (passed as
            ``char_labels`` are).
        train_zoom: the share of training images with a small board trained on as the second look
            sees one of them (:class:`PlateMaskRCNN`); needs ``zoom``.

    Returns:
        a :class:`PlateMaskRCNN` (torchvision's ``GeneralizedRCNN``, the class of its ``MaskRCNN``),
        taking a list of float CHW images in [0, 1] (and targets in training).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts background, so it must be >= 2, got {num_classes}")
    featmap_names = list(backbone.body.return_layers.values())
    channels = backbone.out_channels
    reader = None
    if char_reader is not None:  # CharReader refuses an empty char_labels with a message
        reader = char_reader(char_labels or [], letter_labels=letter_labels or [])
    heads = roi_heads(
        box_head(channels, featmap_names, num_classes),
        mask_head(channels, featmap_names, num_classes),
        reader,
    )
    # the heads that read pixels (the reader, a pixel mask branch) find the input among the features
    return PlateMaskRCNN(
        BackboneWithImage(backbone),
        rpn(channels, featmap_names),
        heads,
        transform,
        zoom=None if zoom is None else zoom(board_labels or []),
        train_zoom=train_zoom,
    )
