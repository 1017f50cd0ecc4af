"""Where plate reading fails: character accuracy of a checkpoint by character height, and the confusions.

    python scripts/char_accuracy.py CKPT [--data-root DIR] [--val-json val.json] [--image-root images] [--list]

For every ground-truth character of the validation split (the checkpoint's own
data set unless ``--data-root`` is given), the highest-scoring character
detection whose box centre lies inside the character's box (score >= 0.05) is
its reading. Prints the share read right, right with score >= the checkpoint's
``score_thr`` (what plate reading keeps), and wrong with such a score, by the
character's height in pixels; then the most frequent confusions. ``--list``
also names every character not read right and kept: image, class, size, and
what was read there with which score.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from lpr.checkpoint import load
from lpr.data.coco import load_coco_json
from lpr.reader import PlateReader

BINS = (12, 16, 22, 30)  # upper edges in px; the last bin is >= 30


def height_bin(h: float) -> str:
    for edge in BINS:
        if h < edge:
            return f"<{edge}"
    return f">={BINS[-1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--val-json", default=None)
    parser.add_argument("--image-root", default=None)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--list", action="store_true", help="name every character not read right and kept")
    args = parser.parse_args()

    loaded = load(args.ckpt)
    reader = PlateReader(loaded.model, loaded.classes, score_thr=0.05)
    thr = loaded.module.hparams.get("metrics", {}).get("plates", {}).get("score_thr", 0.5)
    data = loaded.config["data"]
    root = Path(args.data_root or data["root"])
    coco = load_coco_json(root / (args.val_json or data["val_json"]))
    image_root = root / (args.image_root or data.get("val_image_root") or data["image_root"])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns = collections.defaultdict(list)
    for a in coco["annotations"]:
        if len(names[a["category_id"]]) == 1:  # digits and letters
            anns[a["image_id"]].append(a)

    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    confusions: collections.Counter = collections.Counter()
    lost: list[str] = []
    images = coco["images"]
    for start in range(0, len(images), args.batch):
        chunk = images[start : start + args.batch]
        results = reader.read([str(image_root / im["file_name"]) for im in chunk])
        for im, res in zip(chunk, results, strict=True):
            dets = [d for d in res["detections"] if len(d["label"]) == 1]
            centres = np.array([[(d["box"][0] + d["box"][2]) / 2, (d["box"][1] + d["box"][3]) / 2] for d in dets])
            for a in anns[im["id"]]:
                x, y, w, h = a["bbox"]
                gt, row = names[a["category_id"]], rows[height_bin(h)]
                row["chars"] += 1
                inside = (
                    [i for i, (cx, cy) in enumerate(centres) if x <= cx <= x + w and y <= cy <= y + h] if dets else []
                )
                if not inside:
                    row["missed"] += 1
                    lost.append(f"{im['file_name']} {gt!r} {w:.1f}x{h:.1f} px: nothing found")
                    continue
                best = dets[max(inside, key=lambda i: dets[i]["score"])]
                if best["label"] != gt or best["score"] < thr:
                    lost.append(f"{im['file_name']} {gt!r} {w:.1f}x{h:.1f} px: {best['label']!r} {best['score']:.3f}")
                if best["label"] == gt:
                    row["right"] += 1
                    row["right_kept"] += best["score"] >= thr
                else:
                    row["wrong_kept"] += best["score"] >= thr
                    confusions[(gt, best["label"])] += 1

    total = sum(rows.values(), collections.Counter())
    print(f"checkpoint: {args.ckpt}\nvalidation: {root} ({len(images)} images), kept = score >= {thr}\n")
    print(f"{'height px':>10} {'chars':>6} {'right':>7} {'right kept':>11} {'wrong kept':>11} {'missed':>7}")
    order = [f"<{e}" for e in BINS] + [f">={BINS[-1]}"]
    for name, row in [(k, rows[k]) for k in order if k in rows] + [("all", total)]:
        n = row["chars"]
        print(
            f"{name:>10} {n:6d} {row['right'] / n:7.3f} {row['right_kept'] / n:11.3f} "
            f"{row['wrong_kept'] / n:11.3f} {row['missed'] / n:7.3f}"
        )
    print("\nmost frequent confusions (truth -> read): " + ", ".join(
        f"{g}->{p} {c}" for (g, p), c in confusions.most_common(12)
    ))  # fmt: skip
    if args.list:
        print("\nnot read right and kept (image, truth, width x height, what was read there, score):")
        print("\n".join(f"  {line}" for line in lost) or "  none")


if __name__ == "__main__":
    main()
