"""One flat plate: its text, style, layout and drawing, with a polygon for every part.

The formats on Korean roads: one-line boards (520x110 mm) with a 2-digit or,
since 2019, 3-digit prefix (``12가 3456``, ``123가 4567``) and two-line boards
(335x155 mm) with the prefix on the upper line. The type slot (classes ``a``-``e``)
is drawn as a Hangul syllable on most plates and as a Latin capital or small
letter on the others, so the class is the symbol, not one glyph.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lpr.data.synth.fonts import DIGITS, LETTERS, Face, glyph, glyph_contours

REGION_CLASSES = ("l_s_n", "l_m_n", "r_s_n", "r_m_n")
PLATE_CLASSES: tuple[str, ...] = (*DIGITS, *LETTERS, "l_board", "r_board", *REGION_CLASSES)
CATEGORY_ID = {name: i + 1 for i, name in enumerate(PLATE_CLASSES)}

# (plate colour, text colour) in BGR; None: a random colour and a contrasting text colour.
SCHEMES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]] | None] = {
    "white": ((240, 240, 238), (25, 25, 25)),  # private cars
    "yellow": ((35, 195, 245), (20, 20, 20)),  # commercial vehicles
    "green": ((55, 125, 35), (235, 235, 235)),  # older private boards
    "ev-blue": ((240, 205, 150), (50, 30, 15)),  # electric vehicles: light blue
    "navy": ((95, 35, 15), (235, 235, 235)),  # diplomatic boards
    "orange": ((20, 125, 240), (15, 15, 15)),  # construction machines
    "random": None,
}
SCRIPT_ODDS = {"hangul": 0.6, "upper": 0.25, "lower": 0.15}  # how the type slot is drawn


class Instance:
    """One annotation: flat ``[x0, y0, x1, y1, ...]`` polygons (canvas or image pixels), text, style."""

    __slots__ = ("name", "polygons", "style", "text")

    def __init__(self, name: str, polygons: list, text: str | None = None, style: dict | None = None) -> None:
        self.name, self.polygons, self.text, self.style = name, polygons, text, style


@dataclass(frozen=True)
class PlateStyle:
    """How one plate is drawn (sampled per plate by :func:`sample_style`)."""

    face: Face  # the digits
    letter_face: Face  # the type slot
    script: str  # "hangul", "upper" or "lower"
    scheme: str
    weight: int  # 0-4, light to heavy strokes
    condense: float  # glyph width factor
    slant: float  # horizontal shear (x += slant * height above the baseline)
    monospace: bool  # glyphs centred in equal cells, else set by their own widths
    cell_aspect: float | None = None  # every glyph stretched to line height x this width, or its own proportions


def sample_style(rng: np.random.Generator, faces: tuple[Face, ...], schemes: tuple[str, ...]) -> PlateStyle:
    """A plate style from a pool of faces and schemes: a family first, then one of its faces."""
    digit_faces = [f for f in faces if f.digits]
    families = sorted({f.family for f in digit_faces})
    family = families[rng.integers(len(families))]
    members = [f for f in digit_faces if f.family == family]
    face = members[rng.integers(len(members))]
    scripts = [s for s in SCRIPT_ODDS if any(s in f.scripts for f in faces)]
    odds = np.asarray([SCRIPT_ODDS[s] for s in scripts])
    script = scripts[rng.choice(len(scripts), p=odds / odds.sum())]
    letter_face = face
    if script not in face.scripts:
        able = [f for f in faces if script in f.scripts]
        letter_face = able[rng.integers(len(able))]
    slant = float(rng.uniform(-0.25, 0.25)) if rng.random() < 0.3 else 0.0
    return PlateStyle(
        face=face,
        letter_face=letter_face,
        script=script,
        scheme=schemes[rng.integers(len(schemes))],
        weight=int(rng.integers(0, 5)),
        condense=float(rng.uniform(0.7, 1.25)),
        slant=slant,
        monospace=bool(rng.random() < 0.4),
        cell_aspect=float(rng.uniform(0.45, 0.75)) if rng.random() < 0.25 else None,
    )


def random_text(rng: np.random.Generator) -> tuple[str, str]:
    """Class text of a plate: sub (2 or 3 digits + a type letter ``a``-``e``) and main (4 digits)."""
    n = 2 if rng.random() < 0.5 else 3
    sub = "".join(rng.choice(list(DIGITS), n)) + str(rng.choice(list(LETTERS)))
    return sub, "".join(rng.choice(list(DIGITS), 4))


def _shown(char: str, style: PlateStyle, hangul: dict[str, str]) -> tuple[Face, str]:
    """The face and the text drawn for one class character."""
    if char in LETTERS:
        text = {"hangul": hangul[char], "upper": char.upper(), "lower": char}[style.script]
        return style.letter_face, text
    return style.face, char


def _sized_glyph(char: str, style: PlateStyle, hangul: dict[str, str], height: float) -> tuple[np.ndarray, bool]:
    """The glyph of a class character scaled to a line of ``height`` px; True when it sits on the baseline."""
    face, text = _shown(char, style, hangul)
    alpha = glyph(face, text, style.weight)
    if face.digits:  # relative to the face's digits: small letters stay small, Hangul keeps its size
        ref = glyph(face, "0", style.weight).shape[0]
        scale = height * min(1.15, max(0.45, alpha.shape[0] / ref)) / alpha.shape[0]
    else:
        scale = height / alpha.shape[0]
    gh = max(2, round(alpha.shape[0] * scale))
    gw = max(1, round(alpha.shape[1] * scale * style.condense))
    if style.cell_aspect is not None:  # stretched to fill a cell, as some plate renderers draw
        gh, gw = max(2, round(height)), max(1, round(height * style.cell_aspect))
    alpha = cv2.resize(alpha, (gw, gh), interpolation=cv2.INTER_AREA)
    alpha /= max(float(alpha.max()), 1e-3)  # thin strokes shrunk below a pixel stay full ink
    if style.slant:
        # x' = x + slant * (gh - y): the top leans right for slant > 0, the baseline stays
        shear = np.array([[1, -style.slant, max(style.slant, 0.0) * gh], [0, 1, 0]], np.float32)
        alpha = cv2.warpAffine(alpha, shear, (gw + round(abs(style.slant) * gh), gh), flags=cv2.INTER_LINEAR)
    hangul_slot = char in LETTERS and style.script == "hangul"
    return alpha, not hangul_slot


def _line(glyphs: list[np.ndarray], style: PlateStyle, spacing: float) -> tuple[list[float], float]:
    """Left offsets of glyphs set on one line, and the line's width."""
    if style.monospace:
        cell = max(g.shape[1] for g in glyphs) + spacing
        xs = [i * cell + (cell - spacing - g.shape[1]) / 2 for i, g in enumerate(glyphs)]
        return xs, cell * len(glyphs) - spacing
    xs, x = [], 0.0
    for g in glyphs:
        xs.append(x)
        x += g.shape[1] + spacing
    return xs, x - spacing


def _scheme_colours(rng: np.random.Generator, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    colours = SCHEMES[scheme]
    if colours is None:
        plate = rng.uniform(0, 255, 3)
        light = plate @ np.array([0.114, 0.587, 0.299]) > 128
        text = rng.uniform(0, 60, 3) if light else rng.uniform(200, 255, 3)
    else:
        plate, text = np.asarray(colours[0], np.float64), np.asarray(colours[1], np.float64)
        plate = plate + rng.integers(-15, 16, 3)
    return np.clip(plate, 0, 255).astype(np.float32), np.clip(text + rng.integers(-10, 11, 3), 0, 255).astype(
        np.float32
    )


def render_plate(
    rng: np.random.Generator, kind: str, sub: str, main: str, style: PlateStyle, hangul: dict[str, str]
) -> tuple[np.ndarray, list[Instance]]:
    """Draw a flat plate; returns the float32 BGR canvas and its instances in canvas pixels."""
    if kind == "l_board":
        h = 110
        w = int(h * rng.uniform(3.7, 4.9))
        lines = [(sub + main, h * rng.uniform(0.58, 0.78), h / 2)]
    else:
        h = 155
        w = int(h * rng.uniform(1.95, 2.35))
        top, bottom = h * rng.uniform(0.24, 0.32), h * rng.uniform(0.44, 0.54)
        gap = h * rng.uniform(0.04, 0.08)
        y0 = (h - top - gap - bottom) / 2 + h * rng.uniform(-0.03, 0.03)
        lines = [(sub, top, y0 + top / 2), (main, bottom, y0 + top + gap + bottom / 2)]
    plate_bgr, text_bgr = _scheme_colours(rng, style.scheme)
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:] = plate_bgr
    if rng.random() < 0.7:
        inset = int(rng.integers(2, 6))
        cv2.rectangle(
            canvas, (inset, inset), (w - 1 - inset, h - 1 - inset), text_bgr.tolist(), int(rng.integers(1, 5))
        )

    instances: list[Instance] = []
    n_sub = len(sub)
    for text, height, centre_y in lines:
        glyphs = [_sized_glyph(c, style, hangul, height) for c in text]
        spacing = height * rng.uniform(0.03, 0.2)
        xs, width = _line([g for g, _ in glyphs], style, spacing)
        split = n_sub if len(lines) == 1 else None  # the gap between prefix and number on one line
        gap = height * rng.uniform(0.15, 0.6) if split else 0.0
        fit = min(1.0, 0.92 * w / (width + gap))
        x0 = (w - (width + gap) * fit) / 2 + w * rng.uniform(-0.02, 0.02)
        for i, (char, (alpha, on_baseline), x) in enumerate(zip(text, glyphs, xs, strict=True)):
            if fit < 1.0:
                alpha = cv2.resize(alpha, (max(1, round(alpha.shape[1] * fit)), max(2, round(alpha.shape[0] * fit))))
            gh, gw = alpha.shape
            line_h = height * fit
            top = centre_y + line_h / 2 - gh if on_baseline else centre_y - gh / 2
            left = x0 + (x + (gap if split and i >= split else 0.0)) * fit
            xi, yi = round(left), round(min(max(top, 1.0), h - 1 - gh))
            roi = canvas[yi : yi + gh, xi : xi + gw]
            roi += alpha[: roi.shape[0], : roi.shape[1], None] * (text_bgr - roi)
            polygons = [(c + np.array([xi, yi])).ravel().tolist() for c in glyph_contours(alpha)]
            instances.append(Instance(char, polygons))

    prefix = kind[0]
    for name, group in ((f"{prefix}_s_n", instances[:n_sub]), (f"{prefix}_m_n", instances[n_sub:])):
        pts = np.concatenate([np.asarray(p).reshape(-1, 2) for inst in group for p in inst.polygons])
        (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
        pad = 0.06 * (y2 - y1)
        instances.append(
            Instance(name, [[x1 - pad, y1 - pad, x2 + pad, y1 - pad, x2 + pad, y2 + pad, x1 - pad, y2 + pad]])
        )
    _surface(rng, canvas, instances)
    style_info = {"face": style.face.name, "letter_face": style.letter_face.name, "script": style.script,
                  "scheme": style.scheme}  # fmt: skip
    instances.append(Instance(kind, [[0, 0, w, 0, w, h, 0, h]], text=sub + main, style=style_info))
    return canvas, instances


def _surface(rng: np.random.Generator, canvas: np.ndarray, instances: list[Instance]) -> None:
    """What sits on a plate's surface: bolts outside the text, dirt, a shadow edge, glare (in place)."""
    h, w = canvas.shape[:2]
    boxes = [np.concatenate([np.asarray(p).reshape(-1, 2) for p in inst.polygons]) for inst in instances]
    text_top = min(b[:, 1].min() for b in boxes)
    if rng.random() < 0.5 and text_top > 10:  # two bolts above the text
        r = max(2, round(min(text_top / 3, h * 0.05)))
        colour = rng.uniform(90, 200, 3).tolist()
        for x in (w * rng.uniform(0.15, 0.3), w * rng.uniform(0.7, 0.85)):
            cv2.circle(canvas, (round(x), round(text_top / 2)), r, colour, -1, cv2.LINE_AA)
    if rng.random() < 0.3:  # dirt: faint blotches
        for _ in range(int(rng.integers(2, 8))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(3, 20)), int(rng.integers(2, 10)))
            blot = np.zeros((h, w), np.float32)
            cv2.ellipse(blot, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
            canvas *= 1.0 - rng.uniform(0.1, 0.35) * cv2.GaussianBlur(blot, (0, 0), 2)[..., None]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.25:  # a shadow across the board: a soft-edged half-plane
        angle = rng.uniform(0, np.pi)
        d = (xx - w * rng.uniform(0.2, 0.8)) * np.cos(angle) + (yy - h * rng.uniform(0.2, 0.8)) * np.sin(angle)
        shade = 1.0 - rng.uniform(0.3, 0.6) / (1.0 + np.exp(-d / rng.uniform(1.0, 8.0)))
        canvas *= shade[..., None]
    if rng.random() < 0.2:  # glare: a bright blob
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        s = rng.uniform(0.1, 0.4) * w
        canvas += rng.uniform(60, 180) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))[..., None]
