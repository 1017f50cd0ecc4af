"""Mask R-CNN's ``M x M`` masks pasted into the image: the exact inverse of the training targets.

Training turns a ground-truth mask into its target as torchvision's
``project_masks_on_boxes`` does: the mask, resized with the image by ``s``
(resized / original size), sampled by ``roi_align`` (``aligned=False``) at the
box, so that cell ``i`` holds the resized image at index coordinate
``s * x0 + (i + 0.5) * s * w / M``. Pixel ``j`` of the original image is index
``(j + 0.5) * s - 0.5`` of the resized one, so it belongs at cell coordinate

    u = (j + 0.5 - 0.5 / s - x0) * M / w - 0.5

and the pasted mask is the ``M x M`` mask sampled bilinearly there (zero
outside). torchvision's ``paste_masks_in_image`` instead pads the mask by a
cell, truncates the padded box to whole pixels and stretches the mask over
them, which moves a boundary by up to a pixel: on 10 px characters that is
what DV IoU (docs/metrics.md, DV mAP) measures (docs/recipe.md: of the
validation characters' own masks, 0.84 come back at DV IoU >= 0.5 through
torchvision's paste, 0.94 through this one).

Bilinear sampling is separable, so every mask is two small matrix products:
``Wy @ mask @ Wx.T`` with ``Wx`` the ``(W, M)`` interpolation weights of its box.
"""

from __future__ import annotations

import torch
from torch import Tensor


def interpolation_weights(lo: Tensor, length: Tensor, size: int, cells: int, scale: float) -> Tensor:
    """``(N, size, cells)`` bilinear weights of the cells of ``N`` boxes along one image axis.

    Args:
        lo, length: ``(N,)`` each box's start and length along the axis, in original-image pixels.
        size: the image's length along the axis (pixels).
        cells: the mask's side ``M``.
        scale: resized / original size along the axis (the model's resize).
    """
    j = torch.arange(size, dtype=lo.dtype, device=lo.device)
    u = (j[None, :] + 0.5 - 0.5 / scale - lo[:, None]) * cells / length.clamp(min=1e-6)[:, None] - 0.5
    i = torch.arange(cells, dtype=lo.dtype, device=lo.device)
    return (1.0 - (u[:, :, None] - i[None, None, :]).abs()).clamp(min=0.0)


def paste_masks(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)
) -> Tensor:
    """Soft ``(N, 1, H, W)`` image masks from ``(N, 1, M, M)`` box masks.

    Args:
        masks: the mask head's probabilities, one ``M x M`` mask per box.
        boxes: ``(N, 4)`` xyxy boxes in original-image pixels.
        image_size: ``(H, W)`` of the original image.
        scale: ``(sy, sx)``, the model's resize (resized / original) along each axis.
    """
    n, h, w = len(masks), *image_size
    if n == 0:
        return masks.new_zeros((0, 1, h, w))
    m = masks.shape[-1]
    with torch.autocast(masks.device.type, enabled=False):  # bf16 coordinates would be off by pixels
        masks, boxes = masks.float(), boxes.float()
        wy = interpolation_weights(boxes[:, 1], boxes[:, 3] - boxes[:, 1], h, m, scale[0])
        wx = interpolation_weights(boxes[:, 0], boxes[:, 2] - boxes[:, 0], w, m, scale[1])
        return torch.bmm(torch.bmm(wy, masks[:, 0]), wx.transpose(1, 2))[:, None]
