"""The model's input transform: resize and normalise, training windows, soft mask targets, exact mask paste."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from lpr.models.paste import paste_masks

# torchvision's detection models normalise with the ImageNet statistics
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_target(target: dict[str, Tensor], window: Sequence[int], inside: float = 0.5) -> dict[str, Tensor]:
    """A training target cut to ``window`` ``(x1, y1, x2, y2)`` of its image: the objects with at least
    ``inside`` of their box's area in the window, their boxes clipped to it and moved to its
    origin, their masks cut. An object mostly outside is dropped rather than taught as a part
    of itself (half a character is not that character)."""
    x1, y1, x2, y2 = (int(v) for v in window)
    boxes = torch.as_tensor(target["boxes"])
    origin = boxes.new_tensor([x1, y1, x1, y1])
    clipped = (boxes - origin).clamp(min=0).minimum(boxes.new_tensor([x2 - x1, y2 - y1] * 2))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (kept > 0) & (kept >= inside * area)
    out = {}
    for key, value in target.items():
        if key == "boxes":
            out[key] = clipped[keep]
        elif key == "masks":
            out[key] = value[keep][:, y1:y2, x1:x2]
        elif isinstance(value, Tensor) and value.ndim and len(value) == len(boxes):
            out[key] = value[keep]
        else:
            out[key] = value
    return out


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's transform with training windows, soft mask targets, and masks pasted as their targets were made.

    ``min_size``, ``max_size``: each image is resized so that its shorter side is ``min_size``,
    unless its longer side would then exceed ``max_size`` (torchvision's rule); ``image_mean``,
    ``image_std``: the normalisation (ImageNet's, as torchvision's detection models);
    ``size_divisible``: a batch is padded to a multiple of it.

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
        min_size: int = 288,
        max_size: int = 384,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        *,
        crop: Sequence[int] | None = None,
        soft_masks: bool = True,
        size_divisible: int = 32,
    ) -> None:
        super().__init__(min_size, max_size, list(image_mean), list(image_std), size_divisible=size_divisible)
        if crop is not None and (len(crop) != 2 or min(crop) < 32):
            raise ValueError(f"crop is (height, width), each >= 32 pixels, got {list(crop)}")
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        self.soft_masks = soft_masks

    def scale(self, height: int, width: int) -> float:
        """The resize of an image of that size at inference: the resized pixels per image pixel
        along its shorter axis (torchvision's rule; sizes are floored)."""
        factor = min(self.min_size[-1] / min(height, width), self.max_size / max(height, width))
        return min(math.floor(height * factor) / height, math.floor(width * factor) / width)

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
        return image[:, y : y + h, x : x + w], crop_target(target, (x, y, x + w, y + h), inside=0)

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
