"""The RoI heads lpr builds on torchvision's: a boundary-weighted mask loss, and the sampler settings.

torchvision's ``maskrcnn_loss`` averages the binary cross-entropy over all
``M x M`` cells of each positive RoI's mask. On a character 6-11 px wide most of
those cells are plainly inside or outside; what DV IoU (docs/metrics.md, DV mAP) checks
is where the boundary runs, to the pixel. With ``mask_boundary_weight = w``
the cells within one cell of the target's 0.5 contour count ``w`` times, and
the loss is the weighted mean (``w = 1`` is torchvision's loss). With
``mask_fg_iou_thresh = t`` the mask head learns only from the positive
proposals that overlap their object by IoU ``t`` or more (the box head keeps
all of them; the ground-truth boxes, which torchvision adds to the proposals,
always qualify).

``maskrcnn_loss`` is a module-level function that ``RoIHeads.forward`` calls
inside, so :class:`BoundaryMaskRoIHeads` runs torchvision's forward without
its mask branch in training and then its own, on the same positive proposals
(or the closer of them).
:class:`lpr.models.char_reader.ReadingRoIHeads` derives from it.
:func:`sampling_settings` reads a built RPN's or RoI heads' matcher and sampler
back as constructor arguments, for heads rebuilt around torchvision's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads, project_masks_on_boxes
from torchvision.ops import box_iou


def sampling_settings(module: nn.Module) -> dict:
    """The matcher and sampler settings of a built torchvision RPN or RoI heads, as constructor arguments."""
    return {
        "fg_iou_thresh": module.proposal_matcher.high_threshold,
        "bg_iou_thresh": module.proposal_matcher.low_threshold,
        "batch_size_per_image": module.fg_bg_sampler.batch_size_per_image,
        "positive_fraction": module.fg_bg_sampler.positive_fraction,
    }


def boundary_cells(targets: Tensor) -> Tensor:
    """``(N, M, M)`` bool: the cells of ``(N, M, M)`` mask targets within one cell (8-neighbourhood)
    of their 0.5 contour, on either side."""
    inside = (targets >= 0.5).float()[:, None]
    grown = F.max_pool2d(inside, 3, stride=1, padding=1)
    shrunk = -F.max_pool2d(-inside, 3, stride=1, padding=1)
    return (grown != shrunk)[:, 0]


def boundary_weighted_mask_loss(logits: Tensor, targets: Tensor, boundary_weight: float) -> Tensor:
    """Binary cross-entropy of ``(N, M, M)`` logits against targets in [0, 1], the boundary cells
    weighted ``boundary_weight`` times, averaged by the weights."""
    per_cell = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    weights = 1.0 + (boundary_weight - 1.0) * boundary_cells(targets).float()
    return (weights * per_cell).sum() / weights.sum()


class BoundaryMaskRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` whose mask loss weighs boundary cells ``mask_boundary_weight`` times
    and, with ``mask_fg_iou_thresh``, learns from the closer positives only.

    Inference is torchvision's. In training, the mask head sees the positive proposals
    torchvision's would (the box sampler's, with their matched ground truth), less those
    under ``mask_fg_iou_thresh``.
    """

    def __init__(
        self, *args, mask_boundary_weight: float = 1.0, mask_fg_iou_thresh: float | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        if mask_boundary_weight < 1.0:
            raise ValueError(f"mask_boundary_weight must be >= 1, got {mask_boundary_weight}")
        if mask_fg_iou_thresh is not None and not 0 <= mask_fg_iou_thresh <= 1:
            raise ValueError(f"mask_fg_iou_thresh must lie in [0, 1], got {mask_fg_iou_thresh}")
        self.mask_boundary_weight = float(mask_boundary_weight)
        self.mask_fg_iou_thresh = mask_fg_iou_thresh
        self._own_mask_loss = False  # during a training forward: torchvision's mask branch is skipped
        self._sampled: tuple | None = None  # select_training_samples' result of that forward

    @classmethod
    def around(cls, heads: RoIHeads, **options):
        """The same heads and settings as ``heads`` (a built torchvision ``RoIHeads``), plus ``options``
        (``mask_boundary_weight``, ``mask_fg_iou_thresh`` and those of a subclass)."""
        return cls(
            heads.box_roi_pool,
            heads.box_head,
            heads.box_predictor,
            **sampling_settings(heads),
            bbox_reg_weights=heads.box_coder.weights,
            score_thresh=heads.score_thresh,
            nms_thresh=heads.nms_thresh,
            detections_per_img=heads.detections_per_img,
            mask_roi_pool=heads.mask_roi_pool,
            mask_head=heads.mask_head,
            mask_predictor=heads.mask_predictor,
            **options,
        )

    def has_mask(self) -> bool:
        return super().has_mask() and not self._own_mask_loss

    def select_training_samples(self, proposals, targets):
        self._sampled = super().select_training_samples(proposals, targets)
        return self._sampled

    def forward(self, features, proposals, image_shapes, targets=None):
        own = self.mask_boundary_weight != 1.0 or self.mask_fg_iou_thresh is not None
        if not (self.training and own and super().has_mask()):
            return super().forward(features, proposals, image_shapes, targets)
        self._own_mask_loss = True
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
            sampled = self._sampled
        finally:
            self._own_mask_loss, self._sampled = False, None
        losses["loss_mask"] = self._mask_loss(features, image_shapes, targets, sampled)
        return result, losses

    def _mask_loss(self, features, image_shapes, targets, sampled) -> Tensor:
        proposals, matched_idxs, labels, _ = sampled
        positive = [torch.where(label > 0)[0] for label in labels]
        if self.mask_fg_iou_thresh is not None:  # only the positives this close to their object
            ious = [
                box_iou(p[i], t["boxes"][m[i]]).diagonal()
                for p, m, i, t in zip(proposals, matched_idxs, positive, targets, strict=True)
            ]
            positive = [i[iou >= self.mask_fg_iou_thresh] for i, iou in zip(positive, ious, strict=True)]
        mask_proposals = [p[i] for p, i in zip(proposals, positive, strict=True)]
        matched = [m[i] for m, i in zip(matched_idxs, positive, strict=True)]
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes)))
        size = logits.shape[-1]
        pairs = zip(targets, mask_proposals, matched, strict=True)
        mask_targets = torch.cat([project_masks_on_boxes(t["masks"], p, m, size) for t, p, m in pairs])
        mask_labels = torch.cat([t["labels"][m] for t, m in zip(targets, matched, strict=True)])
        if mask_targets.numel() == 0:
            return logits.sum() * 0
        chosen = logits[torch.arange(len(mask_labels), device=logits.device), mask_labels]
        return boundary_weighted_mask_loss(chosen, mask_targets, self.mask_boundary_weight)
