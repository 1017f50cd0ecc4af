"""Predict overhead: ``lpr.predict`` per image vs the bare model forward on the same images.

    python scripts/bench_predict.py --ckpt CKPT [--images 30] [--repeats 5] [--threads 2] [--batch-size 1]
    python scripts/bench_predict.py --ckpt CKPT --onnx MODEL.onnx [--images 75 | --folder IMAGES]
    python scripts/bench_predict.py --ckpt CKPT --device cuda --batch-size 16 --images 300

With ``--onnx`` (an export of the checkpoint, ``python -m lpr.export``): ``lpr.predict`` with the
export on onnxruntime vs with the checkpoint on PyTorch, side by side, and how their results agree
(plate texts, detections matched by label and box, the largest box and score differences).

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
from lpr.export import compare
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
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (both sides on one GPU)")
    parser.add_argument("--onnx", help="an export of the checkpoint: predict with it vs with the checkpoint")
    parser.add_argument("--folder", help="with --onnx: read these images (e.g. a data set's images/val) instead")
    args = parser.parse_args()
    if args.onnx:
        return onnx_vs_torch(args)
    enlarge_onednn_cache()  # as lpr.predict does
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reader = PlateReader.from_checkpoint(args.ckpt, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate(Path(tmp) / "set", train=0, val=args.images, seed=5)
        folder = paths["images"] / "val"
        files = sorted(folder.iterdir())
        tensors = [torch.from_numpy(read_image_rgb(f)).permute(2, 0, 1).float().div(255).to(device) for f in files]

        @torch.inference_mode()
        def bare() -> float:  # the forward alone, on images already decoded and on the device
            start = time.perf_counter()
            for i in range(0, len(tensors), args.batch_size):
                reader.model(tensors[i : i + args.batch_size])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
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
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, torch threads {args.threads}"
    print(
        f"config: {args.images} synthetic 384x288 images, batch {args.batch_size}, {where}, "
        f"{args.repeats} repeats alternating, checkpoint {args.ckpt}"
    )
    print(f"bare model forward: {b * 1000:.1f} ms/image, {1 / b:.1f} images/s (median)")
    print(f"lpr.predict:        {f * 1000:.1f} ms/image, {1 / f:.1f} images/s (median; read, forward, reading, "
          "drawing, JSON)")  # fmt: skip
    print(f"ratio predict / bare: {ratio:.3f} (median of the per-repeat ratios; ratio of the medians {f / b:.3f})")


def onnx_vs_torch(args: argparse.Namespace) -> None:
    enlarge_onednn_cache()
    torch.set_num_threads(args.threads)
    readers = {"PyTorch": PlateReader.from_checkpoint(args.ckpt), "onnxruntime": PlateReader.from_onnx(args.onnx)}
    times: dict[str, list[float]] = {name: [] for name in readers}
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            folder = Path(args.folder)
        else:
            folder = generate(Path(tmp) / "set", train=0, val=args.images, seed=5)["images"] / "val"
        count = len(list(folder.iterdir()))

        def full(name: str) -> float:
            stats = predict(readers[name], folder, Path(tmp) / name, batch_size=args.batch_size, verbose=False)
            return stats["seconds"] / stats["images"]

        for name in readers:  # warm-up
            full(name)
        for r in range(args.repeats):
            for name in readers:
                times[name].append(full(name))
            pt, ox = times["PyTorch"][-1] * 1000, times["onnxruntime"][-1] * 1000
            print(f"repeat {r + 1}: PyTorch {pt:.0f} ms/image, onnxruntime {ox:.0f} ms/image, ratio {ox / pt:.3f}")
        images = [read_image_rgb(f) for f in sorted(folder.iterdir())]
        agree = compare(readers["PyTorch"], readers["onnxruntime"], images)
    pt, ox = (statistics.median(times[name]) for name in readers)
    ratio = statistics.median(o / p for p, o in zip(times["PyTorch"], times["onnxruntime"], strict=True))
    print(
        f"config: {count} images of {args.folder or 'a synthetic set (validation styles, seed 5)'}, PyTorch batch "
        f"{args.batch_size} and {args.threads} threads, onnxruntime one image a run with its default threads, "
        f"{args.repeats} repeats alternating; checkpoint {args.ckpt}, export {args.onnx}"
    )
    print(f"lpr.predict on PyTorch:     {pt * 1000:.1f} ms/image (median; read, forward, reading, drawing, JSON)")
    print(f"lpr.predict on onnxruntime: {ox * 1000:.1f} ms/image (median)")
    print(f"ratio onnxruntime / PyTorch: {ratio:.3f} (median of the per-repeat ratios)")
    print(
        f"agreement: {agree['same_plates']}/{agree['plates']} plates read alike, {agree['detections']} detections, "
        f"{agree['unmatched_detections']} unmatched; boxes within {agree['max_box_diff']:.3f} px, "
        f"scores within {agree['max_score_diff']:.1e}"
    )


if __name__ == "__main__":
    main()
