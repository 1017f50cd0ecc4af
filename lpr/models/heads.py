"""The heads of the Mask R-CNN, each a part built from its own config entry.

Every part is configured by ``_target_`` with ``_partial_: true``: the YAML gives
its settings, and :func:`lpr.models.maskrcnn.build_maskrcnn` completes it with the
sizes that follow from the other parts (the FPN's channels and map names, the
number of classes). A box or mask part is a :class:`Branch`: the RoI pool, the
head and the predictor that torchvision's ``RoIHeads`` hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, roi_align

from lpr.models.backbones import IMAGE_KEY

# how a branch pools RoIs from the FPN maps: a class like torchvision's MultiScaleRoIAlign
RoIPool = Callable[..., nn.Module]


class Branch(NamedTuple):
    """The three parts of a box or mask branch, as torchvision's ``RoIHeads`` takes them."""

    pool: nn.Module
    head: nn.Module
    predictor: nn.Module


class LevelRPN(RegionProposalNetwork):
    """torchvision's RPN on the named feature maps only: the FPN's, not the input image that
    :class:`lpr.models.backbones.BackboneWithImage` hands on among them to the heads that read pixels."""

    def __init__(self, *args, featmap_names: Sequence[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.featmap_names = list(featmap_names)

    def forward(
        self, images: ImageList, features: dict[str, torch.Tensor], targets: list[dict] | None = None
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        return super().forward(images, {name: features[name] for name in self.featmap_names}, targets)


class Float32RPNHead(RPNHead):
    """torchvision's RPN head with float32 outputs under autocast (the same parameters and keys).

    The proposals are decoded from these outputs in their dtype, and torchvision's RoI heads
    then convert the ground-truth boxes to it for the box and mask targets. In bf16 (8 bits of
    mantissa: 2 px steps from 256 px on) that moved the targets of a 7 px character by up to a
    pixel on each side, and a box under 2 px wide could collapse to zero width and make the box
    loss 0/0 = NaN (a recipe run stopped so at step 1121).
    """

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


def rpn(
    in_channels: int,
    featmap_names: Sequence[str],
    *,
    anchor_sizes: Sequence[Sequence[int]] = ((12, 20), (32, 48), (64, 96), (128, 192)),
    aspect_ratios: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
    anchor_scale: float = 1.0,
    pre_nms_top_n_train: int = 600,
    post_nms_top_n_train: int = 300,
    pre_nms_top_n_test: int = 600,
    post_nms_top_n_test: int = 300,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    fg_iou_thresh: float = 0.7,
    bg_iou_thresh: float = 0.3,
    nms_thresh: float = 0.7,
) -> LevelRPN:
    """torchvision's region proposal network on the FPN maps ``featmap_names`` (plus its ``"pool"`` level).

    Args:
        in_channels: the FPN's channels.
        featmap_names: the FPN's maps, finest first (the backbone's ``"0"``, ``"1"``, ...).
        anchor_sizes: anchor sizes (pixels of the resized image) per map, one tuple per map
            including the pool level.
        aspect_ratios: anchor height/width ratios, the same on every map; characters are tall
            (2.0), one-line boards wide (0.25).
        anchor_scale: multiplies every anchor size (one knob for sweeps and for inputs upscaled
            by the transform).
        pre_nms_top_n_train, pre_nms_top_n_test: proposals kept per map before NMS.
        post_nms_top_n_train, post_nms_top_n_test: proposals kept after NMS.
        batch_size_per_image, positive_fraction: anchors sampled per image for the losses, and
            the share matched to an object.
        fg_iou_thresh, bg_iou_thresh, nms_thresh: torchvision's defaults.
    """
    maps = [*featmap_names, "pool"]
    if len(anchor_sizes) != len(maps):
        raise ValueError(
            f"anchor_sizes needs one tuple per feature map of the RPN ({len(maps)}: {maps}), "
            f"got {len(anchor_sizes)}: {[list(s) for s in anchor_sizes]}"
        )
    if anchor_scale <= 0:
        raise ValueError(f"anchor_scale must be > 0, got {anchor_scale}")
    anchors = AnchorGenerator(
        tuple(tuple(max(1, round(s * anchor_scale)) for s in sizes) for sizes in anchor_sizes),
        tuple(tuple(aspect_ratios) for _ in anchor_sizes),
    )
    return LevelRPN(
        anchors,
        Float32RPNHead(in_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=fg_iou_thresh,
        bg_iou_thresh=bg_iou_thresh,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        pre_nms_top_n={"training": pre_nms_top_n_train, "testing": pre_nms_top_n_test},
        post_nms_top_n={"training": post_nms_top_n_train, "testing": post_nms_top_n_test},
        nms_thresh=nms_thresh,
        featmap_names=maps,
    )


def box_branch(
    in_channels: int,
    featmap_names: Sequence[str],
    num_classes: int,
    *,
    roi_pool: RoIPool = MultiScaleRoIAlign,
    representation_size: int = 512,
) -> Branch:
    """torchvision's box branch: a 7x7 RoIAlign of the FPN maps, a two-layer MLP, class scores and boxes.

    Args:
        in_channels, featmap_names, num_classes: filled in by the builder (``num_classes`` counts
            background).
        roi_pool: the RoIAlign class (:class:`lpr.models.roi_align.SparseMultiScaleRoIAlign`
            computes torchvision's numbers with a CPU backward pass 8x faster).
        representation_size: width of the MLP.
    """
    return Branch(
        roi_pool(list(featmap_names), output_size=7, sampling_ratio=2),
        TwoMLPHead(in_channels * 7 * 7, representation_size),
        FastRCNNPredictor(representation_size, num_classes),
    )


def mask_branch(
    in_channels: int,
    featmap_names: Sequence[str],
    num_classes: int,
    *,
    roi_pool: RoIPool = MultiScaleRoIAlign,
    layers: Sequence[int] = (128, 128),
) -> Branch:
    """torchvision's mask branch: a 14x14 RoIAlign, 3x3 convs of ``layers`` widths, a 2x transposed
    conv and a 28x28 mask per class."""
    layers = list(layers)
    return Branch(
        roi_pool(list(featmap_names), output_size=14, sampling_ratio=2),
        MaskRCNNHeads(in_channels, layers, dilation=1),
        MaskRCNNPredictor(layers[-1], layers[-1], num_classes),
    )


def pixel_mask_branch(
    in_channels: int,
    featmap_names: Sequence[str],
    num_classes: int,
    *,
    roi_pool: RoIPool = MultiScaleRoIAlign,
    layers: Sequence[int] = (128, 128),
    pixel_channels: Sequence[int] = (16, 16),
    fusion_channels: Sequence[int] = (),
) -> Branch:
    """A mask branch that also reads each RoI's own pixels (:class:`PixelMaskHead`): a 10 px
    character covers two cells of the stride-8 map, too coarse for a pixel-exact boundary.

    Args:
        layers: widths of the 3x3 convs on the FPN features (torchvision's mask head).
        pixel_channels: widths of the 3x3 convs on the RoI's pixels (28x28).
        fusion_channels: widths of 3x3 convs reading both before the mask logits
            (:class:`PixelMaskPredictor`); empty: the two are summed by the logits' 1x1 conv.
    """
    head = PixelMaskHead(in_channels, layers, pixel_channels)
    return Branch(
        PixelMaskRoIPool(featmap_names, pool=roi_pool),
        head,
        PixelMaskPredictor(head.out_channels, num_classes, fusion_channels or ()),
    )


class PixelMaskRoIPool(nn.Module):
    """Mask RoI features from the FPN maps (14x14), plus each RoI's pixels on the grid of its 28x28 target.

    The pixels are sampled as torchvision's ``project_masks_on_boxes`` samples the mask targets
    (``roi_align`` on the box, ``aligned=False``, adaptive sampling), so cell ``i`` of the crop is
    cell ``i`` of the target. Returns ``(fpn_features (N, C, 14, 14), pixels (N, 3, 28, 28))`` for
    :class:`PixelMaskHead`.
    """

    def __init__(self, featmap_names: Sequence[str], *, pool: RoIPool = MultiScaleRoIAlign) -> None:
        super().__init__()
        self.pool = pool(list(featmap_names), output_size=14, sampling_ratio=2)

    def forward(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = features[IMAGE_KEY]
        boxes = [b.to(image.dtype) for b in proposals]
        pixels = roi_align(image, boxes, 2 * 14, spatial_scale=1.0, aligned=False)  # project_masks_on_boxes' call
        return self.pool(features, proposals, image_shapes), pixels


def conv_relu_stack(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    """3x3 convs of ``widths`` keeping the map's size, each followed by ReLU, without a norm layer: on
    the mask heads' 28x28 maps GroupNorm on channels-last bf16 tensors was 10x slower than the convs (CPU)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


class PixelMaskHead(nn.Module):
    """torchvision's mask head on the FPN features, side by side with small convs on the RoI's own pixels.

    A 10 px character covers two cells of the stride-8 map its mask is pooled from, so the 28x28
    mask upsampled from there cannot place its boundary to the pixel that DV IoU asks for
    (docs/recipe.md, r34); the glyph's own pixels can. Returns
    ``(fpn (N, layers[-1], 14, 14), pixels (N, channels[-1], 28, 28))`` for
    :class:`PixelMaskPredictor`.
    """

    def __init__(self, in_channels: int, layers: Sequence[int], channels: Sequence[int] = (16, 16)) -> None:
        super().__init__()
        self.fpn = MaskRCNNHeads(in_channels, list(layers), dilation=1)
        self.pixels = conv_relu_stack(3, channels)
        self.out_channels = (list(layers)[-1], list(channels)[-1])

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        features, pixels = x
        return self.fpn(features), self.pixels(pixels)


class PixelMaskPredictor(nn.Module):
    """torchvision's mask predictor (2x transposed conv, ReLU, 1x1 conv to the classes) with the pixel
    features joining before the 1x1 conv: each class's mask logit is the upsampled FPN term plus a
    term of the pixels at that cell.

    ``fusion`` (widths, e.g. ``(32, 32)``): the transposed conv narrows the FPN features to
    ``fusion[0]`` channels, and 3x3 convs of these widths read them together with the pixel
    features before the 1x1 conv, so that what a pixel means (a dark stroke on a light plate or
    the reverse) can follow from the FPN's view of the RoI; empty: the sum above.
    """

    def __init__(self, in_channels: tuple[int, int], num_classes: int, fusion: Sequence[int] = ()) -> None:
        super().__init__()
        fpn, pixels = in_channels
        fusion = [int(c) for c in fusion]
        if any(c < 1 for c in fusion):
            raise ValueError(f"fusion_channels must be positive widths, got {fusion}")
        upsampled = fusion[0] if fusion else fpn
        self.conv5_mask = nn.ConvTranspose2d(fpn, upsampled, 2, 2, 0)
        self.fusion = conv_relu_stack(upsampled + pixels, fusion)
        self.mask_fcn_logits = nn.Conv2d(fusion[-1] if fusion else upsampled + pixels, num_classes, 1)
        for conv in (self.conv5_mask, self.mask_fcn_logits, *self.fusion[::2]):  # torchvision's initialisation
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        features, pixels = x
        upsampled = torch.relu(self.conv5_mask(features))
        return self.mask_fcn_logits(self.fusion(torch.cat([upsampled, pixels.to(upsampled.dtype)], 1)))
