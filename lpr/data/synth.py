"""Synthetic Korean licence plates in COCO format.

Each image is a cluttered scene with 0-2 plates. A plate is drawn flat on a
"canvas" (plate colour, border, characters from OpenCV Hershey fonts or a TTF),
then warped into the scene with a random homography (size, rotation,
perspective). Every character, text region and board gets a polygon, carried
through the same homography, so the annotation follows the pixels.

Usage::

    python -m lpr.data.synth --out data/synth --train 600 --val 75 --seed 0

or from Python: ``generate("data/synth", train=600, val=75, seed=0)``.
Output: ``OUT/train.json``, ``OUT/val.json`` and ``OUT/images/{train,val}/*.jpg``;
the same arguments always give byte-identical JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from lpr.plates import read_boards

DIGITS = tuple(string.digits)
LETTERS = tuple("abcde")
REGION_CLASSES = ("l_s_n", "l_m_n", "r_s_n", "r_m_n")
PLATE_CLASSES: tuple[str, ...] = (*DIGITS, *LETTERS, "l_board", "r_board", *REGION_CLASSES)
CATEGORY_ID = {name: i + 1 for i, name in enumerate(PLATE_CLASSES)}
# What a TTF draws for the vehicle-type letters (Korean plates use these syllables).
HANGUL = dict(zip(LETTERS, "가나다라마", strict=True))

HERSHEY_FACES = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
)
# (plate colour, text colour) in BGR: dark-on-light and light-on-dark schemes.
COLOUR_SCHEMES = (
    ((245, 245, 245), (20, 20, 20)),  # white private plate
    ((40, 200, 250), (15, 15, 15)),  # yellow commercial plate
    ((60, 140, 40), (240, 240, 240)),  # old green plate
    ((150, 60, 20), (240, 240, 240)),  # blue electric-style plate
    ((25, 25, 25), (235, 235, 235)),  # dark plate, light text
    ((200, 215, 225), (60, 30, 10)),  # cream plate, brown text
)


@dataclass(frozen=True)
class Instance:
    """One annotation in image pixels: polygons are flat ``[x0, y0, x1, y1, ...]`` lists."""

    name: str
    polygons: list[list[float]]
    text: str | None = None


# ---------------------------------------------------------------- glyphs


@lru_cache(maxsize=512)
def _glyph(char: str, face: int, thickness: int, font: str | None) -> np.ndarray:
    """A tightly cropped float32 alpha map of one character."""
    if font:
        from PIL import Image, ImageDraw, ImageFont

        ttf = ImageFont.truetype(font, 96)
        canvas = Image.new("L", (160, 160), 0)
        ImageDraw.Draw(canvas).text((16, 16), HANGUL.get(char, char), font=ttf, fill=255)
        alpha = np.asarray(canvas, dtype=np.float32) / 255.0
    else:
        alpha = np.zeros((160, 160), np.uint8)
        cv2.putText(alpha, char, (20, 130), face, 3.0, 255, thickness, cv2.LINE_AA)
        alpha = alpha.astype(np.float32) / 255.0
    ys, xs = np.nonzero(alpha > 0.05)
    if not len(xs):
        raise ValueError(f"the font draws nothing for {char!r} (font={font or 'Hershey'})")
    return alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _glyph_contours(alpha: np.ndarray) -> list[np.ndarray]:
    """Outer outlines of a glyph alpha map, each ``(K, 2)`` float (x, y) in its pixels."""
    mask = (alpha >= 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2).astype(np.float64) for c in contours if cv2.contourArea(c) >= 2.0]


# ---------------------------------------------------------------- plates


def _random_text(rng: np.random.Generator) -> tuple[str, str]:
    sub = "".join(rng.choice(DIGITS, 2)) + str(rng.choice(LETTERS))
    main = "".join(rng.choice(DIGITS, 4))
    return sub, main


def _layout(rng: np.random.Generator, kind: str) -> tuple[tuple[int, int], list[tuple[float, ...]]]:
    """Canvas size and the character cells ``(x, y, w, h)`` of a plate, in canvas pixels.

    The first three cells are the sub number, the last four the main number.
    """
    aspect = rng.uniform(0.45, 0.7)  # character width / height
    if kind == "l_board":
        w, h = int(rng.uniform(480, 560)), 110
        ch = h * rng.uniform(0.68, 0.78)
        cw = ch * aspect
        spacing, gap = cw * rng.uniform(0.08, 0.25), cw * rng.uniform(0.35, 0.8)
        total = 7 * cw + 5 * spacing + gap
        scale = min(1.0, 0.9 * w / total)
        cw, ch, spacing, gap = cw * scale, ch * scale, spacing * scale, gap * scale
        x, y = (w - 7 * cw - 5 * spacing - gap) / 2, (h - ch) / 2
        cells = []
        for i in range(7):
            cells.append((x, y, cw, ch))
            x += cw + (gap if i == 2 else spacing)
        return (w, h), cells
    w, h = int(rng.uniform(320, 360)), 170
    top_y, top_h = h * 0.08, h * rng.uniform(0.24, 0.3)
    bottom_y = top_y + top_h + h * rng.uniform(0.05, 0.08)
    bottom_h = min(h * rng.uniform(0.5, 0.56), h * 0.93 - bottom_y)
    top_w, bottom_w = top_h * aspect, bottom_h * aspect
    top_s, bottom_s = top_w * rng.uniform(0.08, 0.25), bottom_w * rng.uniform(0.08, 0.2)
    bottom_w = min(bottom_w, (0.92 * w - 3 * bottom_s) / 4)
    x0 = (w - 3 * top_w - 2 * top_s) / 2
    cells = [(x0 + i * (top_w + top_s), top_y, top_w, top_h) for i in range(3)]
    x0 = (w - 4 * bottom_w - 3 * bottom_s) / 2
    cells += [(x0 + i * (bottom_w + bottom_s), bottom_y, bottom_w, bottom_h) for i in range(4)]
    return (w, h), cells


def _render_plate(
    rng: np.random.Generator, kind: str, sub: str, main: str, font: str | None
) -> tuple[np.ndarray, list[Instance]]:
    """Draw a flat plate; returns the BGR canvas and its instances in canvas pixels."""
    (w, h), cells = _layout(rng, kind)
    plate_bgr, text_bgr = COLOUR_SCHEMES[rng.integers(len(COLOUR_SCHEMES))]
    jitter = rng.integers(-15, 16, 3)
    plate_bgr = np.clip(np.asarray(plate_bgr) + jitter, 0, 255)
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:] = plate_bgr
    cv2.rectangle(canvas, (3, 3), (w - 4, h - 4), tuple(float(c) for c in text_bgr), int(rng.integers(2, 6)))
    face = int(HERSHEY_FACES[rng.integers(len(HERSHEY_FACES))])
    thickness = int(rng.integers(4, 11))
    text = np.asarray(text_bgr, np.float32)

    instances = []
    for char, (x, y, cw, ch) in zip(sub + main, cells, strict=True):
        glyph = _glyph(char, face, thickness, font)
        gw, gh = max(1, round(cw)), max(1, round(ch))
        alpha = cv2.resize(glyph, (gw, gh), interpolation=cv2.INTER_AREA)
        xi, yi = round(x), round(y)
        roi = canvas[yi : yi + gh, xi : xi + gw]
        roi += alpha[..., None] * (text - roi)
        polygons = [(c + np.array([xi, yi])).ravel().tolist() for c in _glyph_contours(alpha)]
        instances.append(Instance(char, polygons))

    prefix = kind[0]
    for name, group in ((f"{prefix}_s_n", cells[:3]), (f"{prefix}_m_n", cells[3:])):
        pad = 0.06 * group[0][3]
        x1, y1 = min(c[0] for c in group) - pad, min(c[1] for c in group) - pad
        x2 = max(c[0] + c[2] for c in group) + pad
        y2 = max(c[1] + c[3] for c in group) + pad
        instances.append(Instance(name, [[x1, y1, x2, y1, x2, y2, x1, y2]]))
    instances.append(Instance(kind, [[0, 0, w, 0, w, h, 0, h]], text=sub + main))
    return canvas, instances


def _plate_quad(rng: np.random.Generator, kind: str, canvas_wh: tuple[int, int]) -> np.ndarray:
    """Destination corners (4, 2) of a plate around the origin: size, rotation, perspective."""
    cw, ch = canvas_wh
    width = rng.uniform(110, 230) if kind == "l_board" else rng.uniform(85, 175)
    height = width * ch / cw
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * (width / 2, height / 2)
    corners += rng.uniform(-0.06, 0.06, (4, 2)) * (width, height)  # perspective
    angle = np.deg2rad(rng.uniform(-7, 7))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return corners @ rot.T


def _warp_instances(instances: list[Instance], homography: np.ndarray) -> list[Instance]:
    out = []
    for inst in instances:
        polygons = []
        for poly in inst.polygons:
            pts = np.asarray(poly, np.float64).reshape(-1, 1, 2)
            pts = cv2.perspectiveTransform(pts, homography).astype(np.float32)
            if len(pts) > 8:  # character outlines: drop points closer than ~0.4 px to the outline
                pts = cv2.approxPolyDP(pts, 0.4, True)
            if len(pts) >= 3:
                polygons.append(np.round(pts.reshape(-1).astype(np.float64), 2).tolist())
        if polygons:
            out.append(Instance(inst.name, polygons, inst.text))
    return out


def _paste_plate(image: np.ndarray, canvas: np.ndarray, quad: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Warp ``canvas`` onto ``quad`` in ``image`` (in place); returns the canvas->image homography."""
    h, w = canvas.shape[:2]
    # Shrink first with area interpolation: warping a 4x larger canvas directly aliases thin strokes.
    target_w = float(np.linalg.norm(quad[1] - quad[0]))
    scale = min(1.0, 1.5 * target_w / w)
    small = cv2.resize(canvas, (max(2, round(w * scale)), max(2, round(h * scale))), interpolation=cv2.INTER_AREA)
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    homography = cv2.getPerspectiveTransform(src, quad.astype(np.float32))

    x0, y0 = np.floor(quad.min(0)).astype(int)
    x1, y1 = np.ceil(quad.max(0)).astype(int)
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    to_roi = shift @ homography @ np.diag([1 / scale, 1 / scale, 1.0])
    size = (int(x1 - x0), int(y1 - y0))
    warped = cv2.warpPerspective(small, to_roi, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(np.ones(small.shape[:2], np.float32), to_roi, size, flags=cv2.INTER_LINEAR)
    shade = rng.uniform(0.75, 1.15)  # plate-local lighting
    roi = image[y0:y1, x0:x1]
    roi += alpha[..., None] * (warped * shade - roi)
    return homography


# ---------------------------------------------------------------- scenes


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A cluttered scene: a two-colour gradient with random shapes and strokes."""
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    image = np.empty((height, width, 3), np.float32)
    image[:] = top + t * (bottom - top)
    for _ in range(int(rng.integers(6, 16))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        kind = rng.integers(4)
        if kind == 0:
            cv2.rectangle(image, (x, y), (x + int(rng.integers(10, 160)), y + int(rng.integers(10, 120))), colour, -1)
        elif kind == 1:
            cv2.circle(image, (x, y), int(rng.integers(5, 60)), colour, int(rng.choice([-1, 2, 4])))
        elif kind == 2:
            end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(image, (x, y), end, colour, int(rng.integers(1, 6)))
        else:
            pts = rng.integers(0, [width, height], (int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.polylines(image, [pts], True, colour, int(rng.integers(1, 4)))
    return image


def _place(rng: np.random.Generator, quad: np.ndarray, taken: list[np.ndarray], width: int, height: int):
    """Translate ``quad`` to a random spot inside the image, clear of ``taken`` boxes, or None."""
    lo, hi = quad.min(0), quad.max(0)
    margin = 3.0
    if hi[0] - lo[0] + 2 * margin > width or hi[1] - lo[1] + 2 * margin > height:
        return None
    for _ in range(20):
        offset = rng.uniform([margin - lo[0], margin - lo[1]], [width - margin - hi[0], height - margin - hi[1]])
        box = np.concatenate([lo + offset, hi + offset])
        if all(box[2] + 4 < t[0] or t[2] + 4 < box[0] or box[3] + 4 < t[1] or t[3] + 4 < box[1] for t in taken):
            return quad + offset
    return None


def _reads_back(instances: list[Instance], text: str) -> bool:
    """Does the §5.3 reading rule read ``text`` from these instances' boxes?"""
    boxes = [_bbox(inst.polygons) for inst in instances]
    labels = [CATEGORY_ID[inst.name] for inst in instances]
    readings = read_boards(boxes, labels, None, PLATE_CLASSES)
    return len(readings) == 1 and readings[0].valid and readings[0].text == text


def _bbox(polygons: list[list[float]]) -> list[float]:
    pts = np.concatenate([np.asarray(p).reshape(-1, 2) for p in polygons])
    return [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())]


def render_image(
    rng: np.random.Generator, width: int = 384, height: int = 288, font: str | None = None
) -> tuple[np.ndarray, list[Instance]]:
    """One synthetic scene: a BGR uint8 image and its instances (image pixels)."""
    image = _background(rng, width, height)
    n_plates = int(rng.choice([0, 1, 2], p=[0.1, 0.6, 0.3]))
    instances: list[Instance] = []
    taken: list[np.ndarray] = []
    for _ in range(n_plates):
        kind = "l_board" if rng.random() < 0.5 else "r_board"
        sub, main = _random_text(rng)
        canvas, flat = _render_plate(rng, kind, sub, main, font)
        for _attempt in range(10):
            quad = _place(rng, _plate_quad(rng, kind, canvas.shape[1::-1]), taken, width, height)
            if quad is None:
                continue
            src = np.array([[0, 0], [canvas.shape[1], 0], [canvas.shape[1], canvas.shape[0]], [0, canvas.shape[0]]])
            homography = cv2.getPerspectiveTransform(src.astype(np.float32), quad.astype(np.float32))
            warped = _warp_instances(flat, homography)
            # Strong rotation can push one line's characters into the other line's region box;
            # such a plate would not read back, so draw it again elsewhere.
            if len(warped) == len(flat) and _reads_back(warped, sub + main):
                _paste_plate(image, canvas, quad, rng)
                instances += warped
                taken.append(np.asarray(_bbox(warped[-1].polygons)))
                break

    image *= rng.uniform(0.6, 1.3)  # brightness
    image += rng.uniform(-40, 40)
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.7, 1.3) + mean  # contrast
    if rng.random() < 0.5:
        sigma = rng.uniform(0.4, 1.3)
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    noise = rng.uniform(0, 10)
    image += rng.standard_normal(image.shape, dtype=np.float32) * noise
    return np.clip(image, 0, 255).astype(np.uint8), instances


# ---------------------------------------------------------------- data set files


def _make_one(args: tuple[int, str, int, int, int, str | None, str]) -> tuple[str, list[dict]]:
    seed, split, index, width, height, font, image_dir = args
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    image, instances = render_image(rng, width, height, font)
    file_name = f"{split}/{index:06d}.jpg"
    quality = int(rng.integers(80, 96))
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"could not encode {file_name}")
    Path(image_dir, file_name).write_bytes(buf.tobytes())
    anns = []
    for inst in instances:
        x1, y1, x2, y2 = _bbox(inst.polygons)
        area = sum(float(cv2.contourArea(np.asarray(p, np.float32).reshape(-1, 2))) for p in inst.polygons)
        ann = {
            "category_id": CATEGORY_ID[inst.name],
            "segmentation": inst.polygons,
            "area": round(area, 2),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "iscrowd": 0,
        }
        if inst.text is not None:
            ann["text"] = inst.text
        anns.append(ann)
    return file_name, anns


def _write_split(
    out: Path,
    split: str,
    count: int,
    *,
    seed: int,
    width: int,
    height: int,
    font: str | None,
    workers: int,
    progress: bool,
) -> Path:
    image_dir = out / "images"
    (image_dir / split).mkdir(parents=True, exist_ok=True)
    jobs = [(seed, split, i, width, height, font, str(image_dir)) for i in range(count)]
    results: Iterator[tuple[str, list[dict]]]
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    results = pool.map(_make_one, jobs, chunksize=16) if pool else map(_make_one, jobs)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=count, desc=f"synth {split}", unit="img")
    images, annotations = [], []
    try:
        for image_id, (file_name, anns) in enumerate(results, start=1):
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    finally:
        if pool:
            pool.shutdown()
    coco = {
        "info": {"description": "lpr synthetic Korean plates", "seed": seed, "split": split},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": CATEGORY_ID[n], "name": n, "supercategory": "plate"} for n in PLATE_CLASSES],
    }
    path = out / f"{split}.json"
    path.write_text(json.dumps(coco, separators=(",", ":")))
    return path


def generate(
    out_dir: str | os.PathLike,
    *,
    train: int,
    val: int,
    seed: int = 0,
    width: int = 384,
    height: int = 288,
    font: str | None = None,
    workers: int = 1,
    progress: bool = False,
    overwrite: bool = True,
) -> dict[str, Path]:
    """Write a synthetic plate data set; returns ``{"train": json, "val": json, "images": dir}``.

    The set is written to a temporary sibling and renamed into place, so a
    reader never sees half a data set. With ``overwrite=False`` an existing set
    is kept and the new copy dropped: the output is deterministic, so concurrent
    writers (e.g. DDP ranks generating on first use) never delete a set another
    process is reading.

    Raises:
        ValueError: on non-positive sizes or a font that cannot draw a character.
    """
    if train < 0 or val < 0 or train + val == 0:
        raise ValueError(f"train and val must be >= 0 and not both 0, got train={train}, val={val}")
    if width < 64 or height < 64:
        raise ValueError(f"image size must be at least 64x64, got {width}x{height}")
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kw = dict(seed=seed, width=width, height=height, font=font, workers=workers, progress=progress)
    for split, count in (("train", train), ("val", val)):
        _write_split(tmp, split, count, **kw)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    try:
        tmp.rename(out)
    except OSError:  # the set exists (overwrite=False, or another process was faster): keep it
        shutil.rmtree(tmp, ignore_errors=True)
    return {"train": out / "train.json", "val": out / "val.json", "images": out / "images"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lpr.data.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train", type=int, default=600, help="training images")
    parser.add_argument("--val", type=int, default=75, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--font", default=None, help="TTF/OTF font file (e.g. Hangul) instead of Hershey fonts")
    parser.add_argument("--workers", type=int, default=1, help="processes")
    args = parser.parse_args(argv)
    paths = generate(
        args.out,
        train=args.train,
        val=args.val,
        seed=args.seed,
        width=args.width,
        height=args.height,
        font=args.font,
        workers=args.workers,
        progress=True,
    )
    print(f"wrote {paths['train']} ({args.train} images), {paths['val']} ({args.val} images)")


if __name__ == "__main__":
    main()
