"""Convert a folder of labelme JSON files (polygon shapes) to COCO instances JSON.

Usage::

    python -m lpr.data.labelme2coco INPUT_DIR --out OUT_DIR [--val-fraction 0.2] [--seed 0]
        [--classes 0,1,2,...]

Writes ``OUT_DIR/train.json`` (and ``OUT_DIR/val.json`` with a split) whose image
``file_name`` is relative to ``INPUT_DIR``, so ``image_root`` is ``INPUT_DIR``.
Polygons and rectangles are converted; other shape types (circle, line, point,
...) are skipped with one warning per shape.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lpr.outputs import OutputError, make_dir, write_text

log = logging.getLogger(__name__)


def _shape_polygon(shape: dict) -> list[float] | None:
    points = np.asarray(shape.get("points", []), dtype=np.float64).reshape(-1, 2)
    kind = shape.get("shape_type") or "polygon"
    if kind == "polygon" and len(points) >= 3:
        return points.ravel().tolist()
    if kind == "rectangle" and len(points) == 2:
        (x1, y1), (x2, y2) = points.min(0), points.max(0)
        return [x1, y1, x2, y1, x2, y2, x1, y2]
    return None


def _polygon_area(flat: list[float]) -> float:
    x, y = np.asarray(flat[0::2]), np.asarray(flat[1::2])
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def convert(
    input_dir: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> dict[str, dict]:
    """Read every ``*.json`` labelme file under ``input_dir``; returns ``{"train": coco[, "val": coco]}``.

    Args:
        input_dir: folder with labelme JSON files (searched recursively).
        classes: the class list in category-id order; ``None`` takes the sorted
            labels found. Labels not in a given list are an error.
        val_fraction: share of images (by file, shuffled with ``seed``) for ``val``.
        seed: shuffle seed for the split.

    Raises:
        ValueError: no labelme files, a label outside ``classes``, or a bad fraction.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(input_dir)
    files = sorted(p for p in root.rglob("*.json") if p.is_file())
    records = []
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "shapes" not in data:
            continue  # not a labelme file
        records.append((path, data))
    if not records:
        raise ValueError(f"no labelme JSON files (with 'shapes') found under {root}")

    found = sorted({s.get("label") for _, d in records for s in d["shapes"] if s.get("label")})
    classes = list(classes) if classes is not None else found
    if unknown := sorted(set(found) - set(classes)):
        raise ValueError(f"labels {unknown} are not in the class list {classes}")
    category_id = {name: i + 1 for i, name in enumerate(classes)}

    order = np.random.default_rng(seed).permutation(len(records))
    n_val = round(len(records) * val_fraction)
    splits = {"train": sorted(order[n_val:].tolist())}
    if n_val:
        splits["val"] = sorted(order[:n_val].tolist())

    out = {}
    for split, indices in splits.items():
        images, annotations = [], []
        for image_id, idx in enumerate(indices, start=1):
            path, data = records[idx]
            image_path = (path.parent / data.get("imagePath", path.with_suffix(".jpg").name)).resolve()
            images.append(
                {
                    "id": image_id,
                    "file_name": os.path.relpath(image_path, root.resolve()),
                    "width": int(data["imageWidth"]),
                    "height": int(data["imageHeight"]),
                }
            )
            for shape in data["shapes"]:
                polygon = _shape_polygon(shape)
                if polygon is None:
                    log.warning(
                        "%s: skipped shape %r of type %r (only polygon and rectangle are converted)",
                        path,
                        shape.get("label"),
                        shape.get("shape_type"),
                    )
                    continue
                xs, ys = polygon[0::2], polygon[1::2]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_id[shape["label"]],
                        "segmentation": [polygon],
                        "area": _polygon_area(polygon),
                        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                        "iscrowd": 0,
                    }
                )
        out[split] = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": category_id[n], "name": n} for n in classes],
        }
    return out


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m lpr.data.labelme2coco", description=__doc__.split("\n\n")[0])
    parser.add_argument("input_dir")
    parser.add_argument("--out", required=True, help="output folder for train.json / val.json")
    parser.add_argument("--val-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", default=None, help="comma-separated class list in id order")
    args = parser.parse_args(argv)
    classes = args.classes.split(",") if args.classes else None
    result = convert(args.input_dir, classes=classes, val_fraction=args.val_fraction, seed=args.seed)
    try:
        out = make_dir(args.out)
        written = {split: write_text(out / f"{split}.json", json.dumps(coco)) for split, coco in result.items()}
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for split, coco in result.items():
        path = written[split]
        print(f"wrote {path}: {len(coco['images'])} images, {len(coco['annotations'])} annotations")


if __name__ == "__main__":
    main()
