"""Reading a built torchvision RPN's or RoI heads' settings back, for parts rebuilt around them.

:func:`sampling_settings` gives the matcher and sampler settings as constructor
arguments (of an RPN or RoI heads); :func:`roi_heads_arguments` all the
constructor arguments of a built ``RoIHeads``, so that a subclass
(:class:`lpr.models.char_reader.ReadingRoIHeads`) can take its place with the
same parts and settings.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads


def sampling_settings(module: nn.Module) -> dict:
    """The matcher and sampler settings of a built torchvision RPN or RoI heads, as constructor arguments."""
    return {
        "fg_iou_thresh": module.proposal_matcher.high_threshold,
        "bg_iou_thresh": module.proposal_matcher.low_threshold,
        "batch_size_per_image": module.fg_bg_sampler.batch_size_per_image,
        "positive_fraction": module.fg_bg_sampler.positive_fraction,
    }


def roi_heads_arguments(heads: RoIHeads) -> dict:
    """The keyword arguments that build ``heads`` (a built torchvision ``RoIHeads``) again: its parts and settings."""
    return {
        "box_roi_pool": heads.box_roi_pool,
        "box_head": heads.box_head,
        "box_predictor": heads.box_predictor,
        **sampling_settings(heads),
        "bbox_reg_weights": heads.box_coder.weights,
        "score_thresh": heads.score_thresh,
        "nms_thresh": heads.nms_thresh,
        "detections_per_img": heads.detections_per_img,
        "mask_roi_pool": heads.mask_roi_pool,
        "mask_head": heads.mask_head,
        "mask_predictor": heads.mask_predictor,
    }
