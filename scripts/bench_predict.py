"""Predict overhead: ``lpr.predict`` per image vs the bare model forward on the same images.

    python scripts/bench_predict.py --ckpt CKPT [--images 30] [--repeats 5] [--threads 2] [--batch-size 1]

lpr: :func:`lpr.predict.predict` on a folder of synthetic plate images: file
read and decode, preprocessing, forward, plate reading, polygons, drawing and
JSON/JPEG writing. Bare: ``model(images)`` on the same images, already decoded
into tensors. Runs alternate with a warm-up pass first; prints medians of the
per-image times and the median of the per-repeat ratios (each repeat's two runs
are back to back, so a drift of the machine's speed cancels in its ratio).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lpr.data.coco import read_image_rgb
from lpr.data.synth import generate
from lpr.hardware import enlarge_onednn_cache
from lpr.predict import predict
from lpr.reader import PlateReader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    enlarge_onednn_cache()  # as lpr.predict does
    torch.set_num_threads(args.threads)
    reader = PlateReader.from_checkpoint(args.ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate(Path(tmp) / "set", train=0, val=args.images, seed=5)
        folder = paths["images"] / "val"
        files = sorted(folder.iterdir())
        tensors = [torch.from_numpy(read_image_rgb(f)).permute(2, 0, 1).float() / 255 for f in files]

        @torch.inference_mode()
        def bare() -> float:
            start = time.perf_counter()
            for i in range(0, len(tensors), args.batch_size):
                reader.model(tensors[i : i + args.batch_size])
            return (time.perf_counter() - start) / len(tensors)

        def full() -> float:
            stats = predict(reader, folder, Path(tmp) / "out", batch_size=args.batch_size, verbose=False)
            return stats["seconds"] / stats["images"]

        bare(), full()  # warm-up
        times_bare, times_full = [], []
        for r in range(args.repeats):
            times_bare.append(bare())
            times_full.append(full())
            ms_bare, ms_full = times_bare[-1] * 1000, times_full[-1] * 1000
            print(
                f"repeat {r + 1}: bare {ms_bare:.0f} ms/image, lpr.predict {ms_full:.0f} ms/image, "
                f"ratio {ms_full / ms_bare:.3f}"
            )
    b, f = statistics.median(times_bare), statistics.median(times_full)
    ratio = statistics.median(full / bare for bare, full in zip(times_bare, times_full, strict=True))
    print(
        f"config: {args.images} synthetic 384x288 images, batch {args.batch_size}, torch threads {args.threads}, "
        f"{args.repeats} repeats alternating, checkpoint {args.ckpt}"
    )
    print(f"bare model forward: {b * 1000:.1f} ms/image (median)")
    print(f"lpr.predict:        {f * 1000:.1f} ms/image (median; read, forward, reading, drawing, JSON)")
    print(f"ratio predict / bare: {ratio:.3f} (median of the per-repeat ratios; ratio of the medians {f / b:.3f})")


if __name__ == "__main__":
    main()
