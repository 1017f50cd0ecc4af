"""How readable are the characters themselves? A small classifier on ground-truth character crops.

    python scripts/char_ceiling.py [--data-root DIR] [--epochs 30] [--threads 2]

Plate reading fails on small characters (``scripts/char_accuracy.py``). This
asks whether the pixels hold the glyph at all: every ground-truth digit/letter
of the synthetic set is cut out with its true box (plus 20 % context), resized
to 32x32, and a small CNN is trained on the training split's crops and tested
on the validation split's, by the character's height in the image (the same
bins as ``char_accuracy.py``). A detector cannot read better than a classifier
that is handed the true box and trained on the same images, so these shares
bound what the Mask R-CNN can reach on this data (up to the classifier's own
capacity and training time, which are printed).
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from char_accuracy import BINS, height_bin
from plate_setup import plate_config_and_data
from torch import nn

from lpr.data.coco import load_coco_json

SIZE = 32
CONTEXT = 0.2


def crops(root: Path, json_name: str, image_root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(crops N x 3 x 32 x 32 uint8, labels, heights, class names)`` of every digit/letter annotation."""
    coco = load_coco_json(root / json_name)
    names = sorted((c["id"], c["name"]) for c in coco["categories"] if len(c["name"]) == 1)
    index = {cid: i for i, (cid, _) in enumerate(names)}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    by_image = collections.defaultdict(list)
    for a in coco["annotations"]:
        if a["category_id"] in index:
            by_image[a["image_id"]].append(a)
    xs, ys, hs = [], [], []
    for image_id, anns in by_image.items():
        image = cv2.imread(str(root / image_root / files[image_id]))[:, :, ::-1]
        h_img, w_img = image.shape[:2]
        for a in anns:
            x, y, w, h = a["bbox"]
            side = max(w, h) * (1 + 2 * CONTEXT)  # a square around the character, aspect kept
            cx, cy = x + w / 2, y + h / 2
            x0, y0 = round(cx - side / 2), round(cy - side / 2)
            x1, y1 = round(cx + side / 2), round(cy + side / 2)
            pad = max(0, -x0, -y0, x1 - w_img, y1 - h_img)
            padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else image
            patch = padded[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
            xs.append(cv2.resize(patch, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1))
            ys.append(index[a["category_id"]])
            hs.append(h)
    return np.stack(xs), np.array(ys), np.array(hs), [n for _, n in names]


def classifier(n_classes: int) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 128), *block(128, 128), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(128, n_classes),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=None, help="default: the plate recipe's synthetic set")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.data_root is None:
        cfg, _ = plate_config_and_data([])
        args.data_root = Path(cfg.data.root)
    xtr, ytr, _, names = crops(args.data_root, "train.json", "images")
    xva, yva, hva, _ = crops(args.data_root, "val.json", "images")
    xtr_t, ytr_t = torch.from_numpy(xtr).float().div_(255), torch.from_numpy(ytr)
    xva_t = torch.from_numpy(xva).float().div_(255)
    model = classifier(len(names))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * (len(xtr) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(xtr))
        for i in range(0, len(order) - 63, 64):
            idx = order[i : i + 64]
            batch = xtr_t[idx]
            shift = torch.randint(-2, 3, (2,))  # a box a pixel or two off, as a detector's would be
            batch = torch.roll(batch, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(batch), ytr_t[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xva_t[i : i + 256]).argmax(1) for i in range(0, len(xva_t), 256)]).numpy()
    print(
        f"data: {args.data_root} | train crops {len(xtr)}, val crops {len(xva)}, {len(names)} classes | "
        f"{SIZE}x{SIZE} crops, {args.epochs} epochs in {seconds:.0f} s ({args.threads} threads)"
    )
    print(f"{'height px':>10} {'chars':>6} {'right':>7}")
    bins = np.array([height_bin(h) for h in hva])
    for name in [f"<{e}" for e in BINS] + [f">={BINS[-1]}", "all"]:
        sel = bins == name if name != "all" else np.ones(len(bins), bool)
        if sel.any():
            print(f"{name:>10} {int(sel.sum()):6d} {float((pred[sel] == yva[sel]).mean()):7.3f}")
    wrong = collections.Counter((names[t], names[p]) for t, p in zip(yva, pred, strict=True) if t != p)
    print("confusions (truth -> read): " + ", ".join(f"{g}->{p} {c}" for (g, p), c in wrong.most_common(10)))


if __name__ == "__main__":
    main()
