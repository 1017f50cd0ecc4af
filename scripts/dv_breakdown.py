"""Where a checkpoint's DV IoU falls short, per kind of object: the box, the x slices or the y slices.

    python scripts/dv_breakdown.py CKPT [--data-root DIR] [--batch 4] [--threshold 0.5]
        [--split-json train.json] [--max-images N]

DV IoU (docs/metrics.md, DV mAP) is the minimum of the box IoU and the IoUs of the
``2k`` slice pairs (``k`` slices of the boundary sorted by x, then ``k`` sorted
by y). For every ground-truth instance of the validation split, its detection
of the same class with the highest box IoU (at least 0.5; see
``paste_compare.best_detections``) is split into those three parts: the box
IoU, the lowest x-slice IoU and the lowest y-slice IoU. Per kind of object
(the characters together, each other class alone) it prints the instances, the
share matched, the share of the matched that reach DV IoU ``--threshold``, and
the share of the matched whose box, x slices or y slices fall below it (one
instance can fail on several) with each part's median. So it shows which part
of the shape a class loses DV mAP_50 on. The validation split is the
checkpoint's own (or the one under ``--data-root``); ``--split-json
train.json --max-images 75`` reads 75 training images instead, unaugmented,
to tell whether the masks miss what they were trained on as well.
"""

from __future__ import annotations

import collections

import numpy as np
from paste_compare import best_detections, checkpoint_and_batches, checkpoint_parser

from lpr.metrics.dv import dv_iou_matrix, mask_slices
from lpr.plates import is_character_class

PARTS = ("box", "x slices", "y slices")


def parts(pred: np.ndarray, pred_box: np.ndarray, gt: np.ndarray, gt_box: np.ndarray) -> tuple[float, float, float]:
    """The box IoU, the lowest x-slice IoU and the lowest y-slice IoU of one pair (0 for the slices
    if either polygon cannot be divided); their minimum is the DV IoU."""
    p, g = mask_slices(pred, pred_box), mask_slices(gt, gt_box)
    divided = p is not None and g is not None
    a = np.concatenate([pred_box[None], p]) if divided else pred_box[None]  # the box, then the 2k slices
    b = np.concatenate([gt_box[None], g]) if divided else gt_box[None]
    n = len(a)  # each pair as a box pair of dv_iou_matrix: its IoU convention
    no_slices, ok = np.zeros((n, 0, 4)), np.ones(n, bool)
    ious = np.diag(dv_iou_matrix(a, no_slices, ok, b, no_slices, ok))
    if not divided:
        return float(ious[0]), 0.0, 0.0
    k = (n - 1) // 2
    return float(ious[0]), float(ious[1 : 1 + k].min()), float(ious[1 + k :].min())


def main() -> None:
    parser = checkpoint_parser(__doc__)
    parser.add_argument("--threshold", type=float, default=0.5, help="the DV IoU a match needs")
    args = parser.parse_args()
    loaded, batches = checkpoint_and_batches(args)
    kind = {i + 1: ("characters" if is_character_class(n) else n) for i, n in enumerate(loaded.classes)}
    counts = collections.Counter(kind[int(label)] for _, targets in batches for t in targets for label in t["labels"])
    found: dict[str, list[tuple[float, float, float]]] = collections.defaultdict(list)
    for label, pred, pred_box, gt, gt_box in best_detections(loaded.model, batches):
        found[kind[label]].append(parts(pred, pred_box, gt, gt_box))

    t = args.threshold
    print(f"DV IoU threshold t = {t}; per part: the share of the matched below t / the median")
    print(f"{'kind':<12}{'instances':>10}{'matched':>9}{'DV >= t':>9}" + "".join(f"{p:>20}" for p in PARTS))
    for name in sorted(counts, key=lambda n: (n != "characters", n)):
        rows = np.array(found.get(name, []), dtype=np.float64).reshape(-1, 3)
        line = f"{name:<12}{counts[name]:>10}{len(rows) / counts[name]:>9.3f}"
        if len(rows) == 0:
            print(line)
            continue
        line += f"{np.mean(rows.min(axis=1) >= t):>9.3f}"
        line += "".join(f"{np.mean(rows[:, i] < t):>12.3f} / {np.median(rows[:, i]):.3f}" for i in range(3))
        print(line)


if __name__ == "__main__":
    main()
