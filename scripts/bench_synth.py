"""How fast the synthetic generator draws: images per second on one core, at 384x288 by default.

    python scripts/bench_synth.py [--images 300] [--width 384] [--height 288]

Draws ``--images`` scenes of the training styles and of the held-out styles in
this process (one core: no pool), each with its JPEG encoding, after 20 warm-up
images that fill the glyph caches, and prints images/s for both.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from lpr.data.synth import Styles, render_image
from lpr.data.synth.camera import jpeg_quality


def rate(styles: Styles, images: int, width: int, height: int) -> float:
    for i in range(20):
        render_image(np.random.default_rng([1, i]), width, height, styles)
    start = time.perf_counter()
    for i in range(images):
        rng = np.random.default_rng([0, i])
        image, _ = render_image(rng, width, height, styles)
        cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality(rng)])
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--height", type=int, default=288)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    for name, heldout in (("training styles", False), ("held-out styles", True)):
        speed = rate(Styles.for_split(heldout), args.images, args.width, args.height)
        print(f"{name}: {speed:.1f} images/s on one core at {args.width}x{args.height} ({args.images} images)")


if __name__ == "__main__":
    main()
