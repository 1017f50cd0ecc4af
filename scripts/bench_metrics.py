"""Time DV mAP + EIR against pycocotools' segm evaluation on the same detections.

    python scripts/bench_metrics.py [--images 500] [--dets 40] [--repeats 3]

Ground truth: a synthetic plate set. Detections per image: every GT instance
with its box jittered and its mask shifted by a pixel (scores 0.6-1), plus
random extra boxes up to ``--dets`` (scores 0.05-0.55). One thread, one core. Prints medians of the
repeats and the ratio to pycocotools' segm ``evaluate()+accumulate()``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from pycocotools import mask as mask_utils

from lpr.data import CocoInstances
from lpr.data.synth import PLATE_CLASSES, generate
from lpr.metrics.coco import coco_evaluate, make_coco
from lpr.metrics.detection import DVMeanAP, ExactInferenceRate, encode_masks


def make_detections(dataset: CocoInstances, dets: int, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    preds, targets = [], []
    for i in range(len(dataset)):
        _, t = dataset[i]
        n, (h, w) = len(t["labels"]), t["masks"].shape[-2:]
        extra = max(0, dets - n)
        boxes = torch.cat(
            [
                t["boxes"] + torch.from_numpy(rng.normal(0, 1, (n, 4))).float(),
                torch.from_numpy(rng.uniform(0, 200, (extra, 4))).float().sort(1).values,
            ]
        )
        masks = torch.cat([torch.roll(t["masks"], 1, dims=2), torch.zeros((extra, h, w), dtype=torch.uint8)])
        for j in range(extra):  # random blobs for the extra detections
            x1, y1, x2, y2 = boxes[n + j].int().tolist()
            masks[n + j, y1 : y2 + 1, x1 : x2 + 1] = 1
        labels = torch.cat([t["labels"], torch.from_numpy(rng.integers(1, len(PLATE_CLASSES) + 1, extra))])
        # true detections confident, extra ones mostly below the plate-reading threshold
        scores = torch.from_numpy(np.concatenate([rng.uniform(0.6, 1.0, n), rng.uniform(0.05, 0.55, extra)])).float()
        preds.append({"boxes": boxes, "labels": labels, "scores": scores, "masks": masks[:, None]})
        targets.append(t)
    return preds, targets


def time_it(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--dets", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate(tmp, train=0, val=args.images, seed=11, workers=2)
        dataset = CocoInstances(paths["val"], paths["images"], check_images="none")
        preds, targets = make_detections(dataset, args.dets, np.random.default_rng(0))

    def dv_and_eir() -> dict:
        dv, eir = DVMeanAP(len(PLATE_CLASSES)), ExactInferenceRate(PLATE_CLASSES)
        dv.update(preds, targets)
        eir.update(preds, targets)
        return {**dv.compute(), **eir.compute()}

    # pycocotools' segm evaluation of the same detections, RLEs prepared beforehand (its own cost only).
    images, gt_anns, results = [], [], []
    for p, t in zip(preds, targets, strict=True):
        image_id = int(t["image_id"])
        h, w = t["masks"].shape[-2:]
        images.append({"id": image_id, "height": h, "width": w})
        for rle, label, box in zip(
            encode_masks(t["masks"].numpy()), t["labels"].tolist(), t["boxes"].tolist(), strict=True
        ):
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "iscrowd": 0,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                }
            )
        for rle, label, score in zip(
            encode_masks(p["masks"][:, 0].numpy()), p["labels"].tolist(), p["scores"].tolist(), strict=True
        ):
            results.append({"image_id": image_id, "category_id": label, "score": score, "segmentation": rle})
    gt = make_coco(images, [{"id": i} for i in range(1, len(PLATE_CLASSES) + 1)], gt_anns)

    values = dv_and_eir()
    t_ours = time_it(dv_and_eir, args.repeats)
    t_coco = time_it(lambda: coco_evaluate(gt, results, "segm"), args.repeats)
    n_dets = sum(len(p["labels"]) for p in preds)
    print(
        f"images {len(preds)}, detections {n_dets} ({n_dets / len(preds):.0f}/image), "
        f"GT instances {len(gt_anns)}, torch threads 1, median of {args.repeats}"
    )
    print(
        f"DV mAP + EIR (update + compute):      {t_ours:6.2f} s   "
        f"(dv_mAP {values['dv_mAP']:.3f}, EIR {values['EIR']:.3f})"
    )
    print(f"pycocotools segm evaluate+accumulate: {t_coco:6.2f} s")
    print(f"ratio DV+EIR / pycocotools segm:      {t_ours / t_coco:6.2f}")


if __name__ == "__main__":
    main()
