"""How much shape precision DV IoU asks for: ground-truth masks against themselves, perturbed by one pixel.

    python scripts/dv_sensitivity.py [--data-root data/synth_plate_s0_1200_75] [--json val.json] [--images images]

For every annotation of the split, its rasterised mask is compared (DV IoU,
docs/metrics.md, DV mAP, with lpr's own functions) with: itself (box taken from the
mask), itself dilated or eroded by one pixel (3x3), shifted one pixel in x,
and down- then up-sampled 2x (a blurred boundary). Then the best a Mask R-CNN
mask head could do: the mask as training sees it (resized by the model's
``--scale``, projected on its box to an ``M x M`` target as torchvision's
``project_masks_on_boxes`` does) pasted back at the original size, once with
torchvision's ``paste_masks_in_image`` and once with lpr's exact inverse of the
projection (:func:`lpr.models.paste.paste_masks`); the mask resized as
torchvision's transform resizes it (nearest) or bilinearly, as the image. Prints, per kind of object,
the share of pairs that still reach DV IoU 0.5 and the median DV IoU.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import roi_align

from lpr.data.coco import decode_segmentation
from lpr.data.validate import load_coco_json
from lpr.metrics.detection import MASK_THRESHOLD
from lpr.metrics.dv import mask_dv_iou
from lpr.models.paste import paste_masks

KERNEL = np.ones((3, 3), np.uint8)


def perturbations(mask: np.ndarray) -> dict[str, np.ndarray]:
    h, w = mask.shape
    small = cv2.resize(mask.astype(np.float32), (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    return {
        "none": mask,
        "dilated 1 px": cv2.dilate(mask, KERNEL),
        "eroded 1 px": cv2.erode(mask, KERNEL),
        "shifted 1 px in x": np.roll(mask, 1, axis=1),
        "down+up-sampled 2x": (cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5).astype(np.uint8),
    }


def mask_head_round_trips(
    mask: np.ndarray, box: np.ndarray, scale: float, sizes: list[int], modes: tuple[str, ...] = ("nearest", "bilinear")
) -> dict[str, np.ndarray]:
    """The mask as a perfect mask head would give it back: resized, projected to M x M, pasted at the original size.

    The mask is resized with the image (``modes``) either as torchvision's transform does (nearest:
    whole source pixels repeated once or twice at scale 1.5) or bilinearly as the image itself is
    (a soft mask, ``model.net.soft_mask_targets``); the exact paste is the inverse of the latter.
    Keys: ``"{M}x{M} {mode}, {exact|torchvision} paste"`` (torchvision's paste after nearest only).
    """
    h, w = mask.shape
    box_t = torch.tensor(box, dtype=torch.float32)[None]
    out = {}
    for mode in modes:
        resized = F.interpolate(
            torch.from_numpy(mask).float()[None, None], scale_factor=scale, mode=mode, recompute_scale_factor=True,
            **({"align_corners": False} if mode == "bilinear" else {}),
        )  # fmt: skip
        sy, sx = resized.shape[-2] / h, resized.shape[-1] / w
        rois = torch.cat([torch.zeros(1, 1), box_t * torch.tensor([sx, sy, sx, sy])], dim=1)
        for m in sizes:
            target = roi_align(resized, rois, (m, m), 1.0)  # torchvision's project_masks_on_boxes
            pastes = {"exact": paste_masks(target, box_t, (h, w), (sy, sx))}
            if mode == "nearest":
                pastes["torchvision"] = paste_masks_in_image(target, box_t, (h, w))
            for name, soft in pastes.items():
                out[f"{m}x{m} {mode}, {name} paste"] = (soft[0, 0] >= MASK_THRESHOLD).numpy().astype(np.uint8)
    return out


def dv_iou_of_masks(pred: np.ndarray, gt: np.ndarray, gt_box: np.ndarray) -> float:
    ys, xs = np.nonzero(pred)
    if len(xs) == 0:
        return 0.0
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
    return mask_dv_iou(pred, box, gt, gt_box)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synth_plate_s0_1200_75")
    parser.add_argument("--json", default="val.json")
    parser.add_argument("--scale", type=float, default=1.5, help="the model's resize (the plate recipe: 432 / 288)")
    parser.add_argument("--mask-sizes", type=int, nargs="+", default=[28, 56], help="mask head output sizes M")
    args = parser.parse_args()
    coco = load_coco_json(Path(args.data_root) / args.json)
    images = {im["id"]: im for im in coco["images"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    ious: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        gt = decode_segmentation(ann["segmentation"], im["height"], im["width"]).astype(np.uint8)
        x, y, w, h = ann["bbox"]
        gt_box = np.array([x, y, x + w, y + h], np.float64)
        name = names[ann["category_id"]]
        kind = "character" if len(name) == 1 else name
        variants = perturbations(gt) | mask_head_round_trips(gt, gt_box, args.scale, args.mask_sizes)
        for variant, pred in variants.items():
            ious[variant][kind].append(dv_iou_of_masks(pred, gt, gt_box))
    kinds = sorted(next(iter(ious.values())), key=lambda k: (k != "character", k))
    print(f"{args.data_root}/{args.json}: share with DV IoU >= 0.5 (median DV IoU)\n")
    print(f"{'perturbation':<32}" + "".join(f"{k:>16}" for k in kinds))
    for variant, by_kind in ious.items():
        cells = [f"{np.mean(np.array(by_kind[k]) >= 0.5):.2f} ({np.median(by_kind[k]):.2f})" for k in kinds]
        print(f"{variant:<32}" + "".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
