"""A checkpoint's mask metrics with its masks pasted both ways: lpr's exact paste and torchvision's.

    python scripts/paste_compare.py CKPT [--data-root DIR] [--batch 4] [--repeats 3]
        [--split-json train.json] [--max-images N]

The mask head's ``M x M`` masks go into the image either by
:func:`lpr.models.paste.paste_masks` (``model.net.exact_paste=true``, the
default) or by torchvision's ``paste_masks_in_image``; nothing else differs, so
boxes, mAP and EIR are the same and segm mAP and DV mAP (docs/metrics.md, DV mAP) show
what the paste costs. The validation split is the checkpoint's own (or the one
under ``--data-root``). For the characters, each ground-truth character's
detection of its class with the highest box IoU (at least 0.5) gives the
median ratio of its binary mask's area to the ground truth's, its median DV
IoU, the share with DV IoU >= 0.5 and the mean offset of its binary mask's
centroid from the ground truth's (x, y, in pixels): whether masks come out too
thick, too thin or moved (a model trained on torchvision's nearest-resized
targets at scale 1.5 puts its masks a sixth of a pixel right and down). Then
the model's forward on those images, in eval mode, is timed with each paste,
alternating, ``--repeats`` times after one warm-up pass (0: no timing): the
median seconds per image of each.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Iterator

import numpy as np
import torch
from omegaconf import OmegaConf
from torchvision.ops import box_iou

from lpr.checkpoint import LoadedCheckpoint, load
from lpr.evaluate import evaluate_module, validation_data
from lpr.metrics.detection import binary_masks
from lpr.metrics.dv import mask_dv_iou
from lpr.plates import character_labels

PASTES = {"exact (lpr)": True, "torchvision": False}
KEYS = ("mAP", "segm_mAP", "segm_mAP_50", "dv_mAP", "dv_mAP_50", "dv_mAP_75", "EIR")


@torch.inference_mode()
def seconds_per_image(model: torch.nn.Module, batches: list) -> float:
    start = time.perf_counter()
    for images, _ in batches:
        model(images)
    return (time.perf_counter() - start) / sum(len(images) for images, _ in batches)


@torch.inference_mode()
def best_detections(
    model: torch.nn.Module, batches: list, labels: list[int] | None = None
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Each ground-truth instance (of ``labels``; None: all) with its detection of the same class of
    the highest box IoU, if that is at least 0.5: ``(label, predicted binary mask, predicted box,
    ground-truth mask, ground-truth box)``, masks ``uint8`` image-sized, boxes float64 xyxy."""
    for images, targets in batches:
        for out, target in zip(model(images), targets, strict=True):
            for gt_box, label, gt_mask in zip(target["boxes"], target["labels"], target["masks"], strict=True):
                if labels is not None and int(label) not in labels:
                    continue
                same = (out["labels"] == label).nonzero()[:, 0]
                if len(same) == 0:
                    continue
                ious = box_iou(gt_box[None], out["boxes"][same])[0]
                if ious.max() < 0.5:
                    continue
                best = int(same[ious.argmax()])
                yield (
                    int(label),
                    binary_masks(out["masks"][best : best + 1])[0],
                    out["boxes"][best].double().numpy(),
                    binary_masks(gt_mask[None])[0],
                    gt_box.double().numpy(),
                )


def character_masks(
    model: torch.nn.Module, batches: list, char_labels: list[int]
) -> tuple[list[float], list[float], list[np.ndarray]]:
    """Area ratios (predicted / ground truth), DV IoUs and centroid offsets ``(dx, dy)`` of the
    ground-truth characters' best detections."""
    ratios, dvs, offsets = [], [], []
    for _, pred, pred_box, gt, gt_box in best_detections(model, batches, char_labels):
        ratios.append(pred.sum() / max(1, gt.sum()))
        dvs.append(mask_dv_iou(pred, pred_box, gt, gt_box))
        if pred.any() and gt.any():
            offsets.append(centroid(pred) - centroid(gt))
    return ratios, dvs, offsets


def centroid(mask: np.ndarray) -> np.ndarray:
    """``(x, y)`` mean pixel position of a binary mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def checkpoint_parser(description: str) -> argparse.ArgumentParser:
    """The arguments of a script that evaluates a checkpoint on a validation split."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--data-root", default=None, help="a COCO data set with the checkpoint's classes")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--split-json", default=None, help="evaluate this JSON of the data set (e.g. train.json)")
    parser.add_argument("--max-images", type=int, default=None, help="only the first images of the split")
    return parser


def checkpoint_and_batches(args: argparse.Namespace) -> tuple[LoadedCheckpoint, list]:
    """The checkpoint (2 torch threads) and the batches of its validation split (or ``--data-root``'s,
    or its ``--split-json``; the first ``--max-images`` of them); prints both."""
    torch.set_num_threads(2)
    loaded = load(args.ckpt)
    data_cfg = OmegaConf.create(loaded.config["data"])
    if args.data_root:
        data_cfg.root, data_cfg.synthesize = args.data_root, None
    if args.split_json:  # read as the validation split is: no augmentation
        data_cfg.val_json, data_cfg.val_image_root = args.split_json, None
    loader = validation_data(loaded, data_cfg, batch_size=args.batch).split_dataloader("val")
    batches = list(loader if args.max_images is None else itertools.islice(loader, -(-args.max_images // args.batch)))
    if args.max_images is not None and batches:
        images, targets = batches[-1]
        keep = args.max_images - args.batch * (len(batches) - 1)
        batches[-1] = (images[:keep], targets[:keep])
    count = sum(len(b[0]) for b in batches)
    print(f"checkpoint: {args.ckpt}\nvalidation: {data_cfg.root}/{data_cfg.val_json}, {count} images, "
          f"batch {args.batch}, torch threads {torch.get_num_threads()}\n")  # fmt: skip
    return loaded, batches


def main() -> None:
    parser = checkpoint_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="timing passes; 0: no timing")
    args = parser.parse_args()
    loaded, batches = checkpoint_and_batches(args)
    transform = loaded.model.transform
    print(f"{'paste':<14}" + "".join(f"{k:>13}" for k in KEYS))
    for name, exact in PASTES.items():
        transform.exact_paste = exact
        report, _ = evaluate_module(loaded.module, batches, loaded.classes)
        print(f"{name:<14}" + "".join(f"{report[k]:>13.3f}" if report[k] is not None else f"{'-':>13}" for k in KEYS))
    chars = character_labels(loaded.classes)
    print("\ncharacters, each one's best detection of its class (box IoU >= 0.5):")
    for name, exact in PASTES.items():
        transform.exact_paste = exact
        ratios, dvs, offsets = character_masks(loaded.model, batches, chars)
        dx, dy = np.mean(offsets, axis=0)
        print(f"  {name:<14} {len(ratios)} matched: mask area / ground truth's median {np.median(ratios):.3f}, "
              f"DV IoU median {np.median(dvs):.3f}, share >= 0.5 {np.mean(np.array(dvs) >= 0.5):.3f}, "
              f"centroid offset mean ({dx:+.3f}, {dy:+.3f}) px")  # fmt: skip

    if args.repeats < 1:  # --repeats 0: the metrics only
        return
    times: dict[str, list[float]] = {name: [] for name in PASTES}
    for repeat in range(args.repeats + 1):
        for name, exact in PASTES.items():
            transform.exact_paste = exact
            t = seconds_per_image(loaded.model, batches)
            if repeat:  # the first pass warms up
                times[name].append(t)
    print("\nforward, eval mode (median of " + f"{args.repeats}): "
          + ", ".join(f"{name} {1000 * statistics.median(t):.1f} ms/image" for name, t in times.items()))  # fmt: skip


if __name__ == "__main__":
    main()
