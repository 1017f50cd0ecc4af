"""How much of a training image do its objects take, and which training crops hold them whole?

    python scripts/crop_fit.py [--crop 288x384 --crop 256x320 ...]   (default: the recipe's train_crop)

For ``model.net.train_crop`` (``lpr.models.maskrcnn.DetectionTransform``): the union box of
each training image's objects (the plate: boards, text regions, characters), scaled like
the recipe's input (``model.net.min_size`` over the image height), against windows of the
scaled image. Prints the mean share of the image the union covers and, per window, the
share of images whose objects fit it whole (the others get a larger window) and the
window's share of the scaled image's pixels.
"""

from __future__ import annotations

import argparse

import numpy as np
from plate_setup import plate_config_and_data

from lpr.data.coco import load_coco_json


def union_boxes(coco: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(unions (N, 4) xyxy, image sizes (N, 2) h w)`` of the images with objects."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    unions: dict[int, list[float]] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        u = unions.setdefault(a["image_id"], [np.inf, np.inf, -np.inf, -np.inf])
        u[:] = [min(u[0], x), min(u[1], y), max(u[2], x + w), max(u[3], y + h)]
    ids = sorted(unions)
    return np.array([unions[i] for i in ids]), np.array([sizes[i] for i in ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", action="append", help="HxW in the scaled image (repeatable)")
    args = parser.parse_args()
    cfg, datamodule = plate_config_and_data([])
    coco = load_coco_json(datamodule.train_json)
    unions, sizes = union_boxes(coco)
    scale = cfg.model.net.min_size / sizes[:, 0]
    extent = (unions[:, 2:] - unions[:, :2])[:, ::-1] * scale[:, None]  # (h, w) after scaling
    full = sizes * scale[:, None]
    print(f"{len(unions)} training images with objects, scaled x{scale.mean():.2f} to {full.mean(0).round().tolist()}")
    print(f"the objects' union box covers {np.mean(extent.prod(1) / full.prod(1)):.0%} of an image on average")
    recipe = "x".join(map(str, cfg.model.net.train_crop))
    for crop in args.crop or [recipe]:
        h, w = (int(v) for v in crop.split("x"))
        fits = (extent[:, 0] <= h) & (extent[:, 1] <= w)
        pixels = h * w / full.prod(1).mean()
        print(f"{h}x{w}: holds the objects of {fits.mean():.0%} of the images whole, {pixels:.0%} of the pixels")


if __name__ == "__main__":
    main()
