"""Reading plates: ``python -m lpr.predict ckpt_path=CKPT input=IMAGE_OR_DIR_OR_VIDEO output=DIR``
or ``model=model.onnx``: ``ckpt_path`` (``model`` is another name for it) reads a checkpoint or,
by its ``.onnx`` suffix, an export of one (``python -m lpr.export``, run by onnxruntime).

For each image, ``DIR/<stem>.json`` (detections and plate readings) and
``DIR/<stem>.jpg`` (masks, boxes, labels and plate text drawn), in the input
folder's subfolders, keeping the suffix where two inputs share a stem; one line per
image on the console and a summary. Unreadable files are reported and skipped;
the exit code is 1 if any failed.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from lpr.checkpoint import CheckpointError
from lpr.config_check import PREDICT_RULES, ConfigError, clear_errors, model_alias, validate_options
from lpr.draw import draw_result
from lpr.hardware import enlarge_onednn_cache
from lpr.onnx_reader import OnnxModelError
from lpr.outputs import OutputError, make_dir, write_image, write_text
from lpr.reader import PlateReader
from lpr.results import ReaderBase, UnreadableImageError, load_image
from lpr.stream import StreamError, is_stream, read_stream
from lpr.tracks import PlateTracker

log = logging.getLogger("lpr.predict")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_images(source: str | Path) -> tuple[list[Path], list[tuple[str, str]], list[Path]]:
    """An image file, or the images (by suffix, sorted) in a folder and its subfolders.

    Returns:
        ``(images, unreadable, ignored)``: the image files; ``(path, why)`` for each entry with an
        image suffix that is no regular file (a broken symbolic link, a pipe);
        the other files, which are no images by their suffix.

    Raises:
        FileNotFoundError: ``source`` does not exist or a folder holds no images.
    """
    path = Path(source)
    if path.is_file():
        return [path], [], []
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} does not exist")
    images, unreadable, ignored = [], [], []
    for p in sorted(path.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            if p.is_file():
                ignored.append(p)
        elif p.is_file():
            images.append(p)
        elif p.is_symlink() and not p.exists():
            unreadable.append((str(p), f"broken symbolic link (to {os.readlink(p)})"))
        elif not p.is_dir():
            unreadable.append((str(p), "not a regular file"))
    if not images and not unreadable:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path}")
    return images, unreadable, ignored


def output_names(files: list[Path], root: Path) -> dict[Path, Path]:
    """Each input's output name without extension, relative to the output folder: its path under ``root``
    without the suffix (``sub/car.jpg`` -> ``sub/car``), or with it where two inputs of one folder share a
    stem (``car.jpg`` and ``car.png`` -> ``car.jpg`` and ``car.png``), so no result overwrites another."""
    relative = {path: path.relative_to(root) for path in files}
    stems = collections.Counter(rel.with_suffix("") for rel in relative.values())
    return {path: rel if stems[rel.with_suffix("")] > 1 else rel.with_suffix("") for path, rel in relative.items()}


def summary_line(result: dict) -> str:
    """``img.jpg: 12a3456 (l_board, 0.97)``; ``no plate`` when none was read."""
    plates = ", ".join(f"{p['text']} ({p['type']}, {p['score']:.2f})" for p in result["plates"])
    return f"{result['image']}: {plates or 'no plate'}"


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict(
    reader: ReaderBase,
    source: str | Path,
    output: str | Path,
    *,
    batch_size: int = 4,
    draw: bool = True,
    verbose: bool = True,
) -> dict:
    """Read every image under ``source`` and write its JSON (and drawing) to ``output``.

    Returns:
        ``{"images", "failed": [(path, reason)], "ignored": [paths of files that are no images by suffix],
        "plates", "seconds", "images_per_s"}``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files, failed, ignored = list_images(source)
    root = Path(source) if Path(source).is_dir() else Path(source).parent
    names_out = output_names(files, root)
    out = make_dir(output)
    for path, reason in failed:
        tqdm.write(f"{Path(path).name}: FAILED ({reason})", file=sys.stdout)
    done = plates = 0
    start = time.perf_counter()
    bar = tqdm(total=len(files), unit="img", disable=len(files) == 1 or not sys.stderr.isatty())
    for batch in _batches(files, batch_size):
        images, names = [], []
        for path in batch:
            try:
                rgb = load_image(path)[0]
                reader.region(rgb.shape[1], rgb.shape[0])  # a roi outside this image fails it alone
                images.append(rgb)
                names.append(path)
            except (UnreadableImageError, ValueError) as e:
                failed.append((str(path), str(e)))
                tqdm.write(f"{path.name}: FAILED ({e})", file=sys.stdout)
        if images:
            results = reader.read(images, color="rgb")
            for path, rgb, result in zip(names, images, results, strict=True):
                result["image"] = path.relative_to(root).as_posix()
                base = out / names_out[path]
                make_dir(base.parent)
                write_text(f"{base}.json", json.dumps(result, indent=1))
                if draw:
                    drawn = draw_result(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), result)
                    write_image(f"{base}.jpg", drawn, (cv2.IMWRITE_JPEG_QUALITY, 90))
                if verbose:
                    tqdm.write(summary_line(result), file=sys.stdout)
                done += 1
                plates += len(result["plates"])
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - start
    return {
        "images": done,
        "failed": failed,
        "ignored": ignored,
        "plates": plates,
        "seconds": seconds,
        "images_per_s": done / seconds if seconds > 0 else 0.0,
    }


def run(cfg: DictConfig) -> int:
    """The predict task behind the Hydra shell; returns the process exit code."""
    validate_options(cfg, PREDICT_RULES)
    enlarge_onednn_cache()
    roi = cfg.get("roi")
    options = {
        "device": cfg.device,
        "score_thr": cfg.get("score_thr"),
        "max_side": cfg.max_side,
        "roi": None if roi is None else list(roi),
        "zoom": cfg.get("zoom"),
    }
    if Path(cfg.ckpt_path).suffix.lower() == ".onnx":
        reader: ReaderBase = PlateReader.from_onnx(cfg.ckpt_path, **options)
    else:
        reader = PlateReader.from_checkpoint(cfg.ckpt_path, **options)
    if is_stream(cfg.input):
        tracker = PlateTracker(
            iou_thresh=cfg.track.iou_thresh, max_gap=cfg.track.max_gap, min_readings=cfg.track.min_readings
        )
        stats = read_stream(
            reader,
            cfg.input,
            cfg.output,
            every_n_frames=cfg.every_n_frames,
            max_frames=cfg.max_frames,
            tracker=tracker,
            video=cfg.get("video"),
        )
        stopped = " (stopped: the events so far are written)" if stats["interrupted"] else ""
        print(
            f"{stats['frames']} frames ({stats['frames_read']} read), {stats['events']} plate events, "
            f"{stats['frames_per_s']:.2f} frames/s -> {Path(cfg.output) / 'events.jsonl'}{stopped}"
        )
        if stats["video"]:
            print(f"annotated video: {stats['video']}")
        return 130 if stats["interrupted"] else 0
    stats = predict(reader, cfg.input, cfg.output, batch_size=cfg.batch_size, draw=cfg.draw)
    print(
        f"{stats['images']} images, {stats['plates']} plates read, {len(stats['failed'])} failed, "
        f"{stats['images_per_s']:.2f} images/s -> {cfg.output}"
    )
    for path, reason in stats["failed"]:
        print(f"failed: {path}: {reason}")
    if stats["ignored"]:
        names = ", ".join(str(p) for p in stats["ignored"][:10]) + (", ..." if len(stats["ignored"]) > 10 else "")
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        print(f"ignored {len(stats['ignored'])} files without an image suffix ({suffixes}): {names}")
    return 1 if stats["failed"] else 0


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@clear_errors(CheckpointError, ConfigError, FileNotFoundError, OnnxModelError, OutputError, StreamError)
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


def cli() -> None:
    """The command line: ``model=`` is another name for ``ckpt_path=``."""
    sys.argv = model_alias(sys.argv)
    main()


if __name__ == "__main__":
    cli()
