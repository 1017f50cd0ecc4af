"""Detection-specific transform steps that ``torchvision.transforms.v2`` lacks."""

from __future__ import annotations

import torch
from torchvision import tv_tensors


class BoxesFromMasks:
    """Re-derive each box from its mask after geometric augmentation, and drop vanished instances.

    An affine transform turns a tight box into the loose box of a rotated box;
    the mask moved exactly, so the tight box comes from it. Instances with
    fewer than ``min_pixels`` mask pixels left (moved out of the frame) are removed.

    Args:
        min_pixels: smallest mask (in pixels) an instance may keep.
    """

    def __init__(self, min_pixels: int = 4) -> None:
        if min_pixels < 1:
            raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
        self.min_pixels = min_pixels

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        masks = target["masks"]
        keep = masks.flatten(1).sum(1) >= self.min_pixels
        masks = masks[keep]
        boxes = torch.zeros((len(masks), 4), dtype=torch.float32)
        if len(masks):
            rows, cols = masks.bool().any(2), masks.bool().any(1)  # (N, H), (N, W)
            h, w = masks.shape[-2:]
            ar_h, ar_w = torch.arange(h), torch.arange(w)
            boxes[:, 0] = torch.where(cols, ar_w, w).min(1).values
            boxes[:, 1] = torch.where(rows, ar_h, h).min(1).values
            boxes[:, 2] = torch.where(cols, ar_w, -1).max(1).values + 1
            boxes[:, 3] = torch.where(rows, ar_h, -1).max(1).values + 1
        out = dict(target)
        out["masks"] = tv_tensors.Mask(masks)
        out["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(masks.shape[-2:]))
        for key in ("labels", "iscrowd"):
            if key in target:
                out[key] = target[key][keep]
        return image, out
