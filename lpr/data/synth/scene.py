"""A scene: background, distractor text, 0-2 plates in perspective, occluders, and the camera.

:class:`Styles` is the pool a split draws from. Training and ``val`` draw from
the training styles; ``val_heldout`` only from faces and schemes held out of
training by name (:data:`HELDOUT_FACES`, :data:`HELDOUT_SCHEMES`), so it
measures how the model reads plates in styles it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from lpr.data.synth.camera import expose, paste, plate_quad
from lpr.data.synth.fonts import (
    DEFAULT_HANGUL,
    DIGITS,
    STROKE_SYLLABLES,
    Face,
    SynthError,
    builtin_faces,
    folder_faces,
    glyph,
)
from lpr.data.synth.plate import CATEGORY_ID, PLATE_CLASSES, SCHEMES, Instance, random_text, render_plate, sample_style
from lpr.plates import read_boards

HELDOUT_FACES = (
    "hershey-complex",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSerif-Italic",
    "DejaVuSerif-BoldItalic",
    "NanumGothicExtraBold",
)
HELDOUT_SCHEMES = ("green",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Styles:
    """The faces, colour schemes, type-slot Hangul and backgrounds one split draws from."""

    faces: tuple[Face, ...]
    schemes: tuple[str, ...]
    hangul: tuple[tuple[str, str], ...]
    backgrounds: tuple[str, ...] = ()

    @classmethod
    def for_split(
        cls,
        heldout: bool,
        *,
        fonts: str | None = None,
        backgrounds: str | None = None,
        hangul: dict[str, str] | None = None,
    ) -> Styles:
        """Training styles (built-in faces not held out, plus ``fonts``), or only the held-out ones.

        Raises:
            SynthError: on a font or background folder that cannot be used, or a bad Hangul map.
        """
        hangul = dict(DEFAULT_HANGUL if hangul is None else hangul)
        if sorted(hangul) != sorted(DEFAULT_HANGUL) or any(len(v) != 1 for v in hangul.values()):
            raise SynthError(f"hangul must map each of a-e to one character, got {hangul}")
        faces = tuple(f for f in builtin_faces() if (f.name in HELDOUT_FACES) == heldout)
        if fonts and not heldout:
            faces += folder_faces(fonts, hangul)
        if set(hangul.values()) - set(STROKE_SYLLABLES):  # the stroke-drawn face draws only those five
            faces = tuple(f for f in faces if f.path is not None or f.hershey is not None)
        schemes = tuple(s for s in SCHEMES if (s in HELDOUT_SCHEMES) == heldout)
        return cls(faces, schemes, tuple(sorted(hangul.items())), _background_files(backgrounds))


def _background_files(folder: str | None) -> tuple[str, ...]:
    if not folder:
        return ()
    root = Path(folder)
    if not root.is_dir():
        raise SynthError(f"background folder {root} does not exist or is not a folder")
    files = tuple(str(p) for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SynthError(f"background folder {root} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


@lru_cache(maxsize=16)
def _photo(path: str) -> np.ndarray:
    """A background photo, its longer side at most 1024 px (a cache of full-size photos would not fit)."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SynthError(f"background image {path} cannot be read as an image")
    scale = 1024 / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image


def background(rng: np.random.Generator, width: int, height: int, files: tuple[str, ...] = ()) -> np.ndarray:
    """A float32 BGR scene: a random crop of a photo from ``files``, or gradients, shapes and strokes."""
    if files:
        photo = _photo(files[rng.integers(len(files))])
        ph, pw = photo.shape[:2]
        s = rng.uniform(0.5, 1.0) * min(pw / width, ph / height)
        cw, ch = max(1, round(width * s)), max(1, round(height * s))
        x, y = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
        crop = photo[y : y + ch, x : x + cw]
        return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
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


def _distractor(rng: np.random.Generator, image: np.ndarray, styles: Styles) -> None:
    """A sign or sticker with digits and letters that is not a plate (not annotated), in place."""
    faces = [f for f in styles.faces if f.digits]
    face = faces[rng.integers(len(faces))]
    pool = DIGITS + "".join(c for c in "ABCDEFGHKLMNPRSTXYZ" if "upper" in face.scripts)
    text = "".join(rng.choice(list(pool), int(rng.integers(1, 6))))
    height = rng.uniform(8, 40)
    glyphs = [cv2.resize(g, (max(1, round(g.shape[1] * height / g.shape[0])), round(height)))
              for g in (glyph(face, c) for c in text)]  # fmt: skip
    pad = round(height * rng.uniform(0.1, 0.5))
    w = sum(g.shape[1] for g in glyphs) + pad * (len(glyphs) + 1)
    canvas = np.empty((round(height) + 2 * pad, w, 3), np.float32)
    canvas[:] = rng.uniform(0, 255, 3)
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    x = pad
    for g in glyphs:
        roi = canvas[pad : pad + g.shape[0], x : x + g.shape[1]]
        roi += g[..., None] * (colour - roi)
        x += g.shape[1] + pad
    h_img, w_img = image.shape[:2]
    scale = min(1.0, 0.8 * w_img / w, 0.8 * h_img / canvas.shape[0])
    quad = plate_quad(rng, canvas.shape[1::-1], w * scale)
    quad += rng.uniform([0, 0], [w_img, h_img])
    paste(image, canvas, quad)


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


def bbox(polygons: list[list[float]]) -> list[float]:
    """The xyxy box of flat polygons."""
    pts = np.concatenate([np.asarray(p).reshape(-1, 2) for p in polygons])
    return [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())]


def _warp(instances: list[Instance], homography: np.ndarray) -> list[Instance]:
    out = []
    for inst in instances:
        polygons = []
        for poly in inst.polygons:
            pts = cv2.perspectiveTransform(np.asarray(poly, np.float64).reshape(-1, 1, 2), homography)
            pts = pts.astype(np.float32)
            if len(pts) > 8:  # character outlines: drop points closer than ~0.4 px to the outline
                pts = cv2.approxPolyDP(pts, 0.4, True)
            if len(pts) >= 3:
                polygons.append(np.round(pts.reshape(-1).astype(np.float64), 2).tolist())
        if polygons:
            out.append(Instance(inst.name, polygons, inst.text, inst.style))
    return out


def _reads_back(instances: list[Instance], text: str) -> bool:
    """Does the plate-reading rule read ``text`` from these instances' boxes?"""
    boxes = [bbox(inst.polygons) for inst in instances]
    labels = [CATEGORY_ID[inst.name] for inst in instances]
    readings = read_boards(boxes, labels, None, PLATE_CLASSES)
    return len(readings) == 1 and readings[0].valid and readings[0].text == text


def _occlude(rng: np.random.Generator, image: np.ndarray, board: np.ndarray, chars: list[list[float]]) -> None:
    """Cover a part of a board's margin (never a character) with an object, in place."""
    x1, y1, x2, y2 = board
    for _ in range(5):
        w, h = rng.uniform(0.1, 0.3) * (x2 - x1), rng.uniform(0.3, 0.8) * (y2 - y1)
        cx, cy = rng.uniform(x1, x2), (y1 if rng.random() < 0.5 else y2) + rng.uniform(-0.2, 0.2) * h
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if all(box[2] < c[0] or c[2] < box[0] or box[3] < c[1] or c[3] < box[1] for c in chars):
            colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
            cv2.rectangle(image, (round(box[0]), round(box[1])), (round(box[2]), round(box[3])), colour, -1)
            return


def plate_width(rng: np.random.Generator, kind: str) -> float:
    """A plate's width in pixels, log-uniform: 80-300 (one-line) or 60-220 (two-line), and 15 % of
    them smaller, down to 45 or 40, where the two-line plate's upper line is 5-8 px tall."""
    small = rng.random() < 0.15
    low, high = {("l_board", False): (80, 300), ("l_board", True): (45, 80), ("r_board", False): (60, 220),
                 ("r_board", True): (40, 60)}[kind, small]  # fmt: skip
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def render_image(
    rng: np.random.Generator, width: int = 384, height: int = 288, styles: Styles | None = None
) -> tuple[np.ndarray, list[Instance]]:
    """One synthetic scene: a BGR uint8 image and its instances (image pixels)."""
    styles = styles or Styles.for_split(False)
    hangul = dict(styles.hangul)
    image = background(rng, width, height, styles.backgrounds)
    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.4, 0.3, 0.2, 0.1]))):
        _distractor(rng, image, styles)
    n_plates = int(rng.choice([0, 1, 2], p=[0.1, 0.6, 0.3]))
    instances: list[Instance] = []
    taken: list[np.ndarray] = []
    for _ in range(n_plates):
        kind = "l_board" if rng.random() < 0.55 else "r_board"
        sub, main = random_text(rng)
        style = sample_style(rng, styles.faces, styles.schemes)
        canvas, flat = render_plate(rng, kind, sub, main, style, hangul)
        size = canvas.shape[1::-1]
        for _attempt in range(10):
            quad = _place(rng, plate_quad(rng, size, min(plate_width(rng, kind), 0.9 * width)), taken, width, height)
            if quad is None:
                continue
            src = np.array([[0, 0], [size[0], 0], [size[0], size[1]], [0, size[1]]], np.float32)
            warped = _warp(flat, cv2.getPerspectiveTransform(src, quad.astype(np.float32)))
            # Strong rotation can push one line's characters into the other line's region box;
            # such a plate would not read back, so draw it again elsewhere.
            if len(warped) == len(flat) and _reads_back(warped, sub + main):
                if rng.random() < 0.3:  # a frame or bumper around the board
                    grow = (quad - quad.mean(0)) * rng.uniform(1.05, 1.3) + quad.mean(0)
                    cv2.fillConvexPoly(
                        image, np.round(grow).astype(np.int32), rng.uniform(0, 255, 3).tolist(), cv2.LINE_AA
                    )
                paste(image, canvas, quad, shade=rng.uniform(0.75, 1.15))
                board = bbox(warped[-1].polygons)
                if rng.random() < 0.15:
                    _occlude(rng, image, board, [bbox(i.polygons) for i in warped if len(i.name) == 1])
                instances += warped
                taken.append(np.asarray(board))
                break
    return expose(rng, image), instances
