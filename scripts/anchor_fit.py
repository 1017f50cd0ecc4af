"""How well the RPN's anchor shapes fit the characters: each character's best anchor IoU, by anchor set.

    python scripts/anchor_fit.py [--data-root data/synth_plate_s0_1200_75] [--json train.json] [--scale 1.5] \\
        [--sizes 12,20,32,48 --sizes 8,12,20,32,48 ...] [--ratios 0.25,0.5,1,2]

For every character annotation (single-character class names) of the split, its
box at the model's input scale (``--scale``: the recipe upscales 1.5x) is
compared with every anchor shape of a set: each size of ``--sizes`` (before the
scale, as ``model.net.anchor_sizes`` gives them; all maps' sizes together) at
each aspect ratio (height/width). The IoU is of shapes only (both boxes
centred), the best an anchor of that shape can reach. The RPN takes an anchor
as positive from IoU 0.7 (below it, a character is learnt only from its single
best, low-quality match). Prints the character heights, and per set the median
best IoU and the shares under 0.7 and 0.6, over all characters and over those
under 12 px high at 1x.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lpr.data.validate import load_coco_json
from lpr.plates import is_character_class


def best_anchor_iou(wh: np.ndarray, sizes: list[float], ratios: list[float], scale: float) -> np.ndarray:
    """``(N,)``: the largest shape IoU of each box ``wh[i]`` (width, height) with any anchor shape."""
    anchors = np.array([[s * scale / np.sqrt(r), s * scale * np.sqrt(r)] for s in sizes for r in ratios])
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    return (inter / (wh.prod(1)[:, None] + anchors.prod(1)[None] - inter)).max(1)


def numbers(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synth_plate_s0_1200_75")
    parser.add_argument("--json", default="train.json")
    parser.add_argument("--scale", type=float, default=1.5)
    parser.add_argument("--sizes", type=numbers, action="append", help="comma-separated anchor sizes of one set")
    parser.add_argument("--ratios", type=numbers, default=[0.25, 0.5, 1.0, 2.0])
    args = parser.parse_args()
    sets = args.sizes or [[12, 20, 32, 48], [8, 12, 20, 28, 40, 56], [8, 14, 32, 48]]
    coco = load_coco_json(Path(args.data_root) / args.json)
    chars = {c["id"] for c in coco["categories"] if is_character_class(c["name"])}
    wh = np.array([a["bbox"][2:] for a in coco["annotations"] if a["category_id"] in chars], np.float64)
    small = wh[:, 1] < 12
    wh = wh * args.scale
    heights = np.percentile(wh[:, 1], [1, 5, 50, 95, 99])
    print(f"{args.data_root}/{args.json}: {len(wh)} characters, {small.sum()} under 12 px high at 1x")
    print(f"heights at {args.scale}x, percentiles 1/5/50/95/99: " + " / ".join(f"{h:.1f}" for h in heights))
    print(f"aspect ratios {args.ratios}\n")
    print(f"{'anchor sizes':<28} {'median':>7} {'<0.7':>6} {'<0.6':>6}   {'small: median':>13} {'<0.7':>6}")
    for sizes in sets:
        best = best_anchor_iou(wh, sizes, args.ratios, args.scale)
        print(
            f"{','.join(f'{s:g}' for s in sizes):<28} {np.median(best):7.2f} {(best < 0.7).mean():6.3f} "
            f"{(best < 0.6).mean():6.3f}   {np.median(best[small]):13.2f} {(best[small] < 0.7).mean():6.3f}"
        )


if __name__ == "__main__":
    main()
