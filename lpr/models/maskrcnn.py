"""Mask R-CNN assembled from torchvision parts, sized for licence-plate characters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import get_weight, mobilenet_v3_large, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from lpr.models.char_reader import IMAGE_KEY, CharReader, ReadingRoIHeads
from lpr.models.paste import paste_masks
from lpr.models.roi_align import SparseMultiScaleRoIAlign
from lpr.models.roi_heads import sampling_settings

NormLayer = Callable[[int], nn.Module]


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


class Float32Conv2d(nn.Conv2d):
    """A ``Conv2d`` that runs in float32 under autocast (same parameters and state-dict keys).

    oneDNN's bf16 depthwise convolutions are slower than its float32 ones on a CPU: on
    machine C (AMX) 2-4x for MobileNetV3's depthwise layers, forward and backward,
    channels-last (docs/recipe.md), while its dense bf16 convolutions are faster.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def float32_depthwise(module: nn.Module) -> nn.Module:
    """Replace every depthwise ``Conv2d`` in ``module`` (in place) by a :class:`Float32Conv2d` with its weights."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d and child.groups > 1 and child.groups == child.in_channels == child.out_channels:
            conv = Float32Conv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                stride=child.stride,
                padding=child.padding,
                dilation=child.dilation,
                groups=child.groups,
                bias=child.bias is not None,
                padding_mode=child.padding_mode,
            )
            conv.load_state_dict(child.state_dict())
            setattr(module, name, conv)
        else:
            float32_depthwise(child)
    return module


def mobilenet_v3_fpn(
    *,
    returned_layers: Sequence[int] = (2, 3, 5),
    out_channels: int = 128,
    norm_layer: NormLayer | None = None,
    weights: str | None = None,
    depthwise_float32: bool = False,
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
        depthwise_float32: the body's depthwise convolutions run in float32 under bf16
            autocast (:class:`Float32Conv2d`: faster on a CPU); no effect without autocast.
    """
    body = mobilenet_v3_large(norm_layer=norm_layer or nn.BatchNorm2d)
    _load_weights(body, weights)
    if depthwise_float32:
        float32_depthwise(body)
    features = body.features
    stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    if not returned_layers or min(returned_layers) < 0 or max(returned_layers) >= len(stage_indices):
        raise ValueError(f"returned_layers must lie in 0..{len(stage_indices) - 1}, got {list(returned_layers)}")
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


class LevelRPN(RegionProposalNetwork):
    """torchvision's RPN on the named feature maps only: the FPN's, not the input image that
    :class:`BackboneWithImage` hands on among them to the heads that read pixels."""

    def __init__(self, *args, featmap_names: Sequence[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.featmap_names = list(featmap_names)

    def forward(
        self, images: ImageList, features: dict[str, torch.Tensor], targets: list[dict] | None = None
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        return super().forward(images, {name: features[name] for name in self.featmap_names}, targets)


class BackboneWithImage(nn.Module):
    """A body + FPN that also hands its input on, as map ``"image"`` (stride 1), to heads that read pixels.

    Holds the given backbone's ``body`` and ``fpn`` under the same names, so the weights
    keep their keys.
    """

    def __init__(self, backbone: BackboneWithFPN) -> None:
        super().__init__()
        self.body, self.fpn, self.out_channels = backbone.body, backbone.fpn, backbone.out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.fpn(self.body(x))
        features[IMAGE_KEY] = x
        return features


class PixelMaskRoIPool(nn.Module):
    """Mask RoI features from the FPN maps (14x14), plus each RoI's pixels on the grid of its 28x28 target.

    The pixels are sampled as torchvision's ``project_masks_on_boxes`` samples the mask targets
    (``roi_align`` on the box, ``aligned=False``, adaptive sampling), so cell ``i`` of the crop is
    cell ``i`` of the target. Returns ``(fpn_features (N, C, 14, 14), pixels (N, 3, 28, 28))`` for
    :class:`PixelMaskHead`.
    """

    def __init__(self, featmap_names: Sequence[str], *, pool: type = MultiScaleRoIAlign) -> None:
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
            raise ValueError(f"mask_fusion_channels must be positive widths, got {fusion}")
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


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's transform with training windows, soft mask targets, and masks pasted as their targets were made.

    ``crop`` (height, width): in training, a random window of each resized image that holds all its
    objects, larger along a side where the objects span more (a batch is padded to its largest
    image); an image without objects gets a window anywhere. The characters keep the scale they
    have at inference, while the body, FPN and RPN, whose cost follows the pixels, see fewer of them.
    ``None``: the whole images.

    At inference, each mask goes into the image by :func:`lpr.models.paste.paste_masks`, the inverse
    of the training targets' projection (torchvision's ``paste_masks_in_image`` stretches it over
    whole-pixel boxes, which moves a character's boundary by up to a pixel).

    ``soft_masks`` (the default): in training, the ground-truth masks are resized bilinearly, as the
    image is, to float masks in [0, 1], so a target edge stays where the resized image has it.
    ``False``: torchvision's nearest resize, which gives resized pixel ``i`` source pixel
    ``floor(i / s)``: at ``s = 1.5`` that moves every target a sixth of a source pixel right and
    down, and a model trained on it learns its masks moved so (docs/recipe.md). A binary resize
    cannot avoid it at 1.5: every third resized pixel centre lies on a source pixel edge, and
    ``nearest-exact`` breaks those ties the other way.
    """

    def __init__(
        self,
        *args,
        crop: Sequence[int] | None = None,
        soft_masks: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if crop is not None and (len(crop) != 2 or min(crop) < 32):
            raise ValueError(f"train_crop is (height, width), each >= 32 pixels, got {list(crop)}")
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        self.soft_masks = soft_masks

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        masks = None
        if self.soft_masks and target is not None and "masks" in target:
            target = dict(target)
            masks = target.pop("masks")
        image, target = super().resize(image, target)
        if masks is not None:
            size = tuple(image.shape[-2:])  # the image's own size: the same scale as its resize
            soft = F.interpolate(masks[:, None].float(), size=size, mode="bilinear", align_corners=False)
            target["masks"] = soft[:, 0]
        if self.crop is None or not self.training or target is None:
            return image, target
        (y, x), (h, w) = self._window(image.shape[-2:], target["boxes"])
        target = dict(target)
        boxes = target["boxes"] - torch.tensor([x, y, x, y], dtype=target["boxes"].dtype, device=target["boxes"].device)
        target["boxes"] = boxes.clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device))
        if "masks" in target:
            target["masks"] = target["masks"][:, y : y + h, x : x + w]
        return image[:, y : y + h, x : x + w], target

    def _window(self, size: Sequence[int], boxes: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((top, left), (height, width))`` of a random window of an image of ``size`` holding ``boxes``."""
        start, extent = [], []
        for axis, (full, want) in enumerate(zip(size, self.crop, strict=True)):
            full, want = int(full), min(int(full), want)
            low, high = 0, full - want
            if len(boxes):
                first = max(0, int(boxes[:, axis ^ 1].min().floor()))  # xyxy: y is column 1, x column 0
                last = min(full, int(boxes[:, (axis ^ 1) + 2].max().ceil()))
                want = max(want, last - first)
                low, high = max(0, last - want), min(first, full - want)
            start.append(low + int(torch.randint(high - low + 1, ())))
            extent.append(want)
        return (start[0], start[1]), (extent[0], extent[1])

    def postprocess(
        self,
        result: list[dict[str, torch.Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        if self.training:
            return super().postprocess(result, image_shapes, original_image_sizes)
        for pred, resized, original in zip(result, image_shapes, original_image_sizes, strict=True):
            pred["boxes"] = resize_boxes(pred["boxes"], resized, original)
            if "masks" in pred:
                scale = (resized[0] / original[0], resized[1] / original[1])
                pred["masks"] = paste_masks(pred["masks"], pred["boxes"], original, scale)
        return result


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
    box_positive_fraction: float = 0.25,
    box_fg_iou_thresh: float = 0.5,
    box_bg_iou_thresh: float = 0.5,
    box_detections_per_img: int = 100,
    box_score_thresh: float = 0.05,
    representation_size: int = 512,
    mask_head_layers: Sequence[int] = (128, 128),
    char_reader: dict | None = None,
    char_labels: Sequence[int] | None = None,
    mask_pixel_channels: Sequence[int] | None = None,
    mask_fusion_channels: Sequence[int] | None = None,
    train_crop: Sequence[int] | None = None,
    sparse_roi_align: bool = True,
    soft_mask_targets: bool = True,
) -> MaskRCNN:
    """Mask R-CNN from torchvision parts.

    Args:
        num_classes: classes including background, i.e. ``len(classes) + 1``.
        backbone: a body + FPN (see :func:`mobilenet_v3_fpn`, :func:`resnet50_fpn_v2`);
            its feature maps are named ``"0"``, ``"1"``, ... plus ``"pool"``.
        anchor_sizes: anchor sizes (pixels) per feature map the RPN uses, one tuple
            per map including the pool level.
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
        box_positive_fraction: the share of those RoIs matched to an object (where there are enough).
        box_fg_iou_thresh: a RoI overlapping an object by at least this IoU learns it (torchvision: 0.5).
        box_bg_iou_thresh: a RoI overlapping every object by less learns background; between the two
            it is left out (torchvision: 0.5).
        box_detections_per_img: detections kept per image.
        box_score_thresh: detections below this score are dropped at inference.
        representation_size: width of the two-layer box MLP.
        mask_head_layers: channels of each mask-head conv.
        char_reader: ``{size, context, channels, jitter}`` of a :class:`~lpr.models.char_reader.CharReader`
            that names the character boxes from their pixels (:class:`~lpr.models.char_reader.ReadingRoIHeads`),
            plus the :class:`~lpr.models.char_reader.ReadingRoIHeads` options ``char_nms_thresh``
            (the characters' NMS IoU), ``char_cover_thresh`` (drop a character box covered by a better
            one beyond this share of its area) and ``score_weight`` (the reader's share of a character's
            score; > 0 gives the reader a "not a character" output); ``None``: the box classifier names them.
        char_labels: the labels of the character classes, required with ``char_reader``
            (:class:`lpr.models.module.MaskRCNNModule` passes them from the class names).
        mask_pixel_channels: widths of 3x3 convs on each RoI's own pixels whose features join the
            mask logits (:class:`PixelMaskHead`); ``None``: torchvision's mask head alone.
        mask_fusion_channels: with ``mask_pixel_channels``, widths of 3x3 convs that read the
            upsampled FPN features and the pixel features together before the mask logits
            (:class:`PixelMaskPredictor`); ``None``: the two terms are summed by the logits' 1x1 conv.
        train_crop: ``(height, width)``: train on random windows of the resized images that hold
            their objects (:class:`DetectionTransform`); ``None``: on the whole images.
        sparse_roi_align: the RoI heads pool their features with
            :class:`~lpr.models.roi_align.SparseMultiScaleRoIAlign` (torchvision's results, a CPU
            backward pass 8x faster); ``False``: with torchvision's ``MultiScaleRoIAlign``.
        soft_mask_targets: resize the ground-truth masks bilinearly with the image (float masks in
            [0, 1], :class:`DetectionTransform`); ``False``: torchvision's nearest resize, which
            moves them a sixth of a pixel at scale 1.5.
    Returns:
        A ``torchvision.models.detection.MaskRCNN`` taking a list of float CHW
        images in [0, 1] (and targets in training).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts background, so it must be >= 2, got {num_classes}")
    featmap_names = [name for name in backbone.body.return_layers.values()]
    rpn_maps = [*featmap_names, "pool"]
    if len(anchor_sizes) != len(rpn_maps):
        raise ValueError(
            f"anchor_sizes needs one tuple per feature map of the RPN ({len(rpn_maps)}: {rpn_maps}), "
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
    pool = SparseMultiScaleRoIAlign if sparse_roi_align else MultiScaleRoIAlign
    box_roi_pool = pool(featmap_names, output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(channels * 7 * 7, representation_size)
    if char_reader is not None or mask_pixel_channels is not None:
        backbone = BackboneWithImage(backbone)
    model = MaskRCNN(
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
        box_roi_pool=None,  # torchvision accepts only a MultiScaleRoIAlign here: set below
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        box_batch_size_per_image=box_batch_size_per_image,
        box_positive_fraction=box_positive_fraction,
        box_fg_iou_thresh=box_fg_iou_thresh,
        box_bg_iou_thresh=box_bg_iou_thresh,
        box_detections_per_img=box_detections_per_img,
        box_score_thresh=box_score_thresh,
        mask_roi_pool=pool(featmap_names, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, mask_head_layers, dilation=1),
        mask_predictor=MaskRCNNPredictor(mask_head_layers[-1], mask_head_layers[-1], num_classes),
    )
    model.roi_heads.box_roi_pool = box_roi_pool
    if mask_fusion_channels is not None and mask_pixel_channels is None:
        raise ValueError("mask_fusion_channels joins the pixel features to the FPN's: set mask_pixel_channels too")
    if mask_pixel_channels is not None:  # torchvision accepts only a MultiScaleRoIAlign as the mask pool
        mask_head = PixelMaskHead(channels, mask_head_layers, mask_pixel_channels)
        model.roi_heads.mask_roi_pool = PixelMaskRoIPool(featmap_names, pool=pool)
        model.roi_heads.mask_head = mask_head
        model.roi_heads.mask_predictor = PixelMaskPredictor(
            mask_head.out_channels, num_classes, mask_fusion_channels or ()
        )
    t = model.transform
    model.transform = DetectionTransform(
        t.min_size,
        t.max_size,
        t.image_mean,
        t.image_std,
        size_divisible=t.size_divisible,
        crop=train_crop,
        soft_masks=soft_mask_targets,
    )
    if char_reader is not None:  # CharReader refuses empty char_labels
        char_reader = dict(char_reader)
        options = {
            k: char_reader.pop(k) for k in ("char_nms_thresh", "char_cover_thresh", "score_weight") if k in char_reader
        }
        reader = CharReader(char_labels or [], background=bool(options.get("score_weight")), **char_reader)
        model.roi_heads = ReadingRoIHeads.around(model.roi_heads, reader, **options)
    # the same RPN (torchvision's defaults) on the FPN's maps, not on the input image among them
    if isinstance(backbone, BackboneWithImage):
        rpn = model.rpn
        model.rpn = LevelRPN(
            anchors,
            RPNHead(channels, anchors.num_anchors_per_location()[0]),
            **sampling_settings(rpn),
            pre_nms_top_n=rpn._pre_nms_top_n,
            post_nms_top_n=rpn._post_nms_top_n,
            nms_thresh=rpn.nms_thresh,
            score_thresh=rpn.score_thresh,
            featmap_names=rpn_maps,
        )
    return model
