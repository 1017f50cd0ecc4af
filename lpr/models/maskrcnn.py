"""Mask R-CNN assembled from torchvision parts, sized for licence-plate characters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_weight, mobilenet_v3_large, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

NormLayer = Callable[[int], nn.Module]


def group_norm(num_channels: int, num_groups: int = 16) -> nn.GroupNorm:
    """GroupNorm with the channel count first, so it can stand where BatchNorm2d does."""
    return nn.GroupNorm(min(num_groups, num_channels), num_channels)


def _load_weights(model: nn.Module, weights: str | None) -> None:
    """Load a torchvision weights name (``"MobileNet_V3_Large_Weights.IMAGENET1K_V1"``) or a local file."""
    if weights is None:
        return
    if Path(weights).suffix in (".pth", ".pt") or Path(weights).exists():
        if not Path(weights).is_file():
            raise FileNotFoundError(f"backbone weights file {weights} does not exist")
        state = torch.load(weights, map_location="cpu", weights_only=True)
    else:  # a torchvision weights name: downloads unless already cached
        state = get_weight(weights).get_state_dict(progress=False)
    missing, _ = model.load_state_dict(state, strict=False)
    if len(missing) == len(model.state_dict()):
        raise ValueError(f"backbone weights {weights} match none of the backbone's parameters")


def mobilenet_v3_fpn(
    *,
    returned_layers: Sequence[int] = (2, 3, 5),
    out_channels: int = 128,
    norm_layer: NormLayer | None = None,
    weights: str | None = None,
    stage_end: bool = False,
) -> BackboneWithFPN:
    """MobileNetV3-Large body with an FPN (CPU recipe).

    Args:
        returned_layers: stages fed to the FPN, counted like torchvision's
            ``mobilenet_backbone`` (2, 3, 5 = strides 8, 16, 32). Characters are
            13-50 px, so keep the stride-8 stage.
        out_channels: FPN channels.
        norm_layer: normalisation of the body; default ``nn.BatchNorm2d``
            (torchvision's ``FrozenBatchNorm2d`` does nothing when training from scratch).
        weights: ``None`` (from scratch), a torchvision weights name, or a local ``.pth``.
        stage_end: feed the FPN the last block of each stage (as ResNet FPNs do), not the
            first, downsampling block that torchvision's ``mobilenet_backbone`` returns:
            at stride 8 that is 3 blocks deep instead of 1 (and 112 channels instead of 80
            at stride 16), for the same compute.
    """
    body = mobilenet_v3_large(norm_layer=norm_layer or nn.BatchNorm2d)
    _load_weights(body, weights)
    features = body.features
    stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    if not returned_layers or min(returned_layers) < 0 or max(returned_layers) >= len(stage_indices):
        raise ValueError(f"returned_layers must lie in 0..{len(stage_indices) - 1}, got {list(returned_layers)}")
    if stage_end:  # the block before the next stage's downsampling block (the final 1x1 conv stays last)
        stage_indices = [i - 1 for i in stage_indices[1:]] + stage_indices[-1:]
    return_layers = {str(stage_indices[k]): str(i) for i, k in enumerate(returned_layers)}
    in_channels = [features[stage_indices[k]].out_channels for k in returned_layers]
    return BackboneWithFPN(features, return_layers, in_channels, out_channels, extra_blocks=LastLevelMaxPool())


def resnet50_fpn_v2(
    *,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    out_channels: int = 256,
    norm_layer: NormLayer | None = None,
    weights: str | None = None,
) -> BackboneWithFPN:
    """ResNet-50 body with a normalised FPN, as in torchvision's ``maskrcnn_resnet50_fpn_v2`` (GPU recipe)."""
    norm_layer = norm_layer or nn.BatchNorm2d
    body = resnet50(norm_layer=norm_layer)
    _load_weights(body, weights)
    if not returned_layers or min(returned_layers) < 1 or max(returned_layers) > 4:
        raise ValueError(f"returned_layers must lie in 1..4, got {list(returned_layers)}")
    return_layers = {f"layer{k}": str(i) for i, k in enumerate(returned_layers)}
    in_channels = [256 * 2 ** (k - 1) for k in returned_layers]
    return BackboneWithFPN(
        body, return_layers, in_channels, out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer
    )


def build_maskrcnn(
    *,
    num_classes: int,
    backbone: BackboneWithFPN,
    anchor_sizes: Sequence[Sequence[int]] = ((12, 20), (32, 48), (64, 96), (128, 192)),
    aspect_ratios: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
    anchor_scale: float = 1.0,
    min_size: int = 288,
    max_size: int = 384,
    rpn_pre_nms_top_n_train: int = 600,
    rpn_post_nms_top_n_train: int = 300,
    rpn_pre_nms_top_n_test: int = 600,
    rpn_post_nms_top_n_test: int = 300,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 128,
    box_detections_per_img: int = 100,
    box_score_thresh: float = 0.05,
    representation_size: int = 512,
    mask_head_layers: Sequence[int] = (128, 128),
) -> MaskRCNN:
    """Mask R-CNN from torchvision parts.

    Args:
        num_classes: classes including background, i.e. ``len(classes) + 1``.
        backbone: a body + FPN (see :func:`mobilenet_v3_fpn`, :func:`resnet50_fpn_v2`);
            its feature maps are named ``"0"``, ``"1"``, ... plus ``"pool"``.
        anchor_sizes: anchor sizes (pixels) per feature map, one tuple per map
            including the pool level.
        aspect_ratios: anchor height/width ratios, the same on every map;
            characters are tall (2.0), one-line boards wide (0.25).
        anchor_scale: multiplies every anchor size (one knob for sweeps).
        min_size: shorter image side after the model's internal resize.
        max_size: longer-side cap of that resize.
        rpn_pre_nms_top_n_train: proposals kept per level before NMS (training).
        rpn_post_nms_top_n_train: proposals kept after NMS (training).
        rpn_pre_nms_top_n_test: proposals per level before NMS (inference).
        rpn_post_nms_top_n_test: proposals after NMS (inference).
        rpn_batch_size_per_image: anchors sampled per image for the RPN loss.
        box_batch_size_per_image: RoIs sampled per image for the heads.
        box_detections_per_img: detections kept per image.
        box_score_thresh: detections below this score are dropped at inference.
        representation_size: width of the two-layer box MLP.
        mask_head_layers: channels of each mask-head conv.

    Returns:
        A ``torchvision.models.detection.MaskRCNN`` taking a list of float CHW
        images in [0, 1] (and targets in training).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts background, so it must be >= 2, got {num_classes}")
    featmap_names = [name for name in backbone.body.return_layers.values()]
    n_maps = len(featmap_names) + 1  # + the max-pool level
    if len(anchor_sizes) != n_maps:
        raise ValueError(
            f"anchor_sizes needs one tuple per feature map ({n_maps}: {featmap_names} + pool), "
            f"got {len(anchor_sizes)}: {anchor_sizes}"
        )
    if anchor_scale <= 0:
        raise ValueError(f"anchor_scale must be > 0, got {anchor_scale}")
    anchors = AnchorGenerator(
        tuple(tuple(max(1, round(s * anchor_scale)) for s in sizes) for sizes in anchor_sizes),
        tuple(tuple(aspect_ratios) for _ in anchor_sizes),
    )
    channels = backbone.out_channels
    mask_head_layers = list(mask_head_layers)
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(featmap_names, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        box_batch_size_per_image=box_batch_size_per_image,
        box_detections_per_img=box_detections_per_img,
        box_score_thresh=box_score_thresh,
        mask_roi_pool=MultiScaleRoIAlign(featmap_names, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, mask_head_layers, dilation=1),
        mask_predictor=MaskRCNNPredictor(mask_head_layers[-1], mask_head_layers[-1], num_classes),
    )
