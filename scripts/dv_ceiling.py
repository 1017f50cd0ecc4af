"""What bounds a checkpoint's DV mAP: its masks, or the boxes and scores of its detections.

    python scripts/dv_ceiling.py CKPT [--data-root DIR] [--batch 4] [--mask-size 28]
        [--split-json train.json] [--max-images N]

DV mAP (docs/metrics.md, DV mAP) is COCO AP with DV IoU as the overlap, so it asks two
things of the detections of a class: masks whose DV IoU with their object
reaches the threshold, and scores that rank those first. This script predicts
the validation split once and evaluates DV mAP (lpr's own ``DVMeanAP``) on
changed copies of those detections, nothing else changed:

- ``as predicted``: the checkpoint's figures;
- ``score x maskness``: each score times the mean probability of its mask over
  the pixels it covers (a mask-confidence rescoring, as SOLOv2's "maskness");
- ``ranked by true DV IoU``: scores of the detections that reach DV IoU 0.5
  with an object of their class kept, the others divided by 100 (the best
  ranking these masks allow at DV IoU 0.5);
- ``perfect mask head``: each detection whose box overlaps an object of its
  class by box IoU >= 0.5 (the best one) gets that object's mask as a perfect
  ``M x M`` mask head would give it back on the detection's own box: the
  ground-truth mask resized with the image (bilinear, as the model's
  ``soft_mask_targets``), projected on the box as training projects it, pasted
  by lpr's exact paste (``scripts/dv_sensitivity.py``'s round trip);
- ``perfect mask head, ranked``: both.

The model's resize is read from the checkpoint's ``min_size``/``max_size``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from dv_sensitivity import mask_head_round_trips
from paste_compare import checkpoint_and_batches, checkpoint_parser
from torchvision.ops import box_iou

from lpr.metrics.detection import MASK_THRESHOLD, DVMeanAP, binary_masks
from lpr.metrics.dv import mask_dv_iou

Detections = list[dict[str, torch.Tensor]]


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The scale torchvision's ``GeneralizedRCNNTransform`` resizes an image by."""
    return min(min_size / min(height, width), max_size / max(height, width))


def best_dv_iou(out: dict, target: dict) -> torch.Tensor:
    """Each detection's highest DV IoU with a ground-truth object of its class (0 if none)."""
    preds, gts = binary_masks(out["masks"]), binary_masks(target["masks"])
    pred_boxes, gt_boxes = out["boxes"].double().numpy(), target["boxes"].double().numpy()
    best = torch.zeros(len(preds))
    for i in range(len(preds)):
        for j in (target["labels"] == out["labels"][i]).nonzero()[:, 0].tolist():
            best[i] = max(float(best[i]), mask_dv_iou(preds[i], pred_boxes[i], gts[j], gt_boxes[j]))
    return best


def maskness(out: dict) -> torch.Tensor:
    """Each detection's mean mask probability over the pixels its mask covers."""
    soft = out["masks"][:, 0].flatten(1)
    covered = soft >= MASK_THRESHOLD
    return (soft * covered).sum(1) / covered.sum(1).clamp(min=1)


def perfect_masks(out: dict, target: dict, scale: float, size: int) -> dict:
    """``out`` with the mask of each detection matched to an object of its class (box IoU >= 0.5)
    replaced by that object's mask through a perfect ``size x size`` mask head on the detection's box."""
    masks, gts = out["masks"].clone(), binary_masks(target["masks"])
    key = f"{size}x{size} bilinear, exact paste"
    for i in range(len(out["boxes"])):
        same = (target["labels"] == out["labels"][i]).nonzero()[:, 0]
        if len(same) == 0:
            continue
        ious = box_iou(out["boxes"][i : i + 1], target["boxes"][same])[0]
        if ious.max() < 0.5:
            continue
        gt = gts[int(same[ious.argmax()])]
        trip = mask_head_round_trips(gt, out["boxes"][i].double().numpy(), scale, [size], modes=("bilinear",))[key]
        masks[i, 0] = torch.from_numpy(trip).float()
    return {**out, "masks": masks}


def dv_map(outs: Detections, targets: list[dict], num_classes: int, scores: Callable[[int], torch.Tensor]) -> dict:
    """DV mAP of ``outs`` with image ``n``'s scores replaced by ``scores(n)``."""
    metric = DVMeanAP(num_classes)
    for n, (out, target) in enumerate(zip(outs, targets, strict=True)):
        metric.update([{**out, "scores": scores(n).float()}], [target])
    return metric.compute()


def main() -> None:
    parser = checkpoint_parser(__doc__)
    parser.add_argument("--mask-size", type=int, default=28, help="M of the perfect mask head (torchvision: 28)")
    args = parser.parse_args()
    loaded, batches = checkpoint_and_batches(args)
    net = loaded.config["model"]["net"]
    outs, targets = [], []
    with torch.inference_mode():
        for images, batch_targets in batches:
            outs += loaded.model(images)
            targets += batch_targets
    scales = [resize_scale(*t["masks"].shape[-2:], net["min_size"], net["max_size"]) for t in targets]
    perfect = [perfect_masks(o, t, s, args.mask_size) for o, t, s in zip(outs, targets, scales, strict=True)]

    def ranked(detections: Detections) -> Callable[[int], torch.Tensor]:
        passes = [best_dv_iou(o, t) >= 0.5 for o, t in zip(detections, targets, strict=True)]
        return lambda n: detections[n]["scores"] * torch.where(passes[n], 1.0, 0.01)

    rows = {
        "as predicted": (outs, lambda n: outs[n]["scores"]),
        "score x maskness": (outs, lambda n: outs[n]["scores"] * maskness(outs[n])),
        "ranked by true DV IoU": (outs, ranked(outs)),
        f"perfect {args.mask_size}x{args.mask_size} mask head": (perfect, lambda n: perfect[n]["scores"]),
        f"perfect {args.mask_size}x{args.mask_size} mask head, ranked": (perfect, ranked(perfect)),
    }
    print(f"resize scales {sorted(set(round(s, 4) for s in scales))}, {sum(len(o['boxes']) for o in outs)} detections")
    print(f"{'detections':<40}{'dv_mAP':>9}{'dv_mAP_50':>11}{'dv_mAP_75':>11}")
    for name, (detections, scores) in rows.items():
        res = dv_map(detections, targets, len(loaded.classes), scores)
        print(f"{name:<40}{res['dv_mAP']:>9.3f}{res['dv_mAP_50']:>11.3f}{res['dv_mAP_75']:>11.3f}", flush=True)


if __name__ == "__main__":
    main()
