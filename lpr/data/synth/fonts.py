"""Typefaces for synthetic plates: Hershey stroke fonts, TrueType/OpenType files, stroke-drawn Hangul.

A :class:`Face` draws single characters as alpha maps. The built-in faces come
from OpenCV (the Hershey faces), matplotlib (DejaVu, STIX and Computer Modern
TrueType files), the ``koreanize-matplotlib`` wheel (NanumGothic in four
weights, with Hangul) and a procedural face that draws the five Hangul
type syllables as strokes. Any folder of ``.ttf``/``.otf`` files adds faces.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

DIGITS = "0123456789"
LETTERS = "abcde"
# What Korean plates print in the vehicle-type slot for the classes a-e.
DEFAULT_HANGUL = dict(zip(LETTERS, "가나다라마", strict=True))
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")  # a .ttc collection gives its first font
GLYPH_HEIGHT = 96  # glyphs are drawn at about this many pixels, then resized to their cell


class SynthError(ValueError):
    """Input the generator cannot use (a font, a folder, a setting); the message names the file or value."""


@dataclass(frozen=True)
class Face:
    """One typeface.

    Attributes:
        name: a stable name (``hershey-duplex``, ``DejaVuSans-Bold``, ...), used to hold faces out.
        family: faces of one design share a family; a plate picks a family first, then a face.
        path: the TrueType/OpenType file, or ``None`` for Hershey and stroke faces.
        hershey: the OpenCV Hershey font id, or ``None``.
        scripts: what it can draw in the type slot: a subset of ``{"hangul", "upper", "lower"}``.
        digits: whether it draws digits (the stroke-drawn Hangul face draws only the type syllables).
    """

    name: str
    family: str
    path: str | None = None
    hershey: int | None = None
    scripts: frozenset[str] = frozenset({"upper", "lower"})
    digits: bool = True


HERSHEY = {
    "simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "plain": cv2.FONT_HERSHEY_PLAIN,
    "duplex": cv2.FONT_HERSHEY_DUPLEX,
    "complex": cv2.FONT_HERSHEY_COMPLEX,
    "triplex": cv2.FONT_HERSHEY_TRIPLEX,
    "complex-small": cv2.FONT_HERSHEY_COMPLEX_SMALL,
    "script-simplex": cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    "script-complex": cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
}
# matplotlib's TrueType files that draw digits and Latin letters, by family.
MATPLOTLIB_FACES = {
    "dejavu-sans": ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique"),
    "dejavu-mono": ("DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique"),
    "dejavu-serif": ("DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic"),
    "stix": ("STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta"),
    "computer-modern": ("cmr10", "cmb10", "cmss10", "cmtt10", "cmti10"),
}
NANUM_FACES = ("NanumGothic", "NanumGothicBold", "NanumGothicExtraBold", "NanumGothicLight")


def _matplotlib_font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _nanum_font_dir() -> Path | None:
    # find_spec locates the package without importing it (its import changes matplotlib's settings)
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "fonts"


@lru_cache(maxsize=1)
def builtin_faces() -> tuple[Face, ...]:
    """Every built-in face, in a fixed order (the order is part of the generator's determinism).

    Raises:
        SynthError: when matplotlib's or koreanize-matplotlib's font files are missing.
    """
    faces = [Face(f"hershey-{name}", "hershey", hershey=font) for name, font in HERSHEY.items()]
    mpl = _matplotlib_font_dir()
    for family, names in MATPLOTLIB_FACES.items():
        faces += [Face(name, family, path=str(mpl / f"{name}.ttf")) for name in names]
    nanum = _nanum_font_dir()
    if nanum is None:
        raise SynthError(
            "the Hangul faces come from the koreanize-matplotlib package (NanumGothic), which is not "
            "installed: pip install koreanize-matplotlib"
        )
    hangul = frozenset({"hangul", "upper", "lower"})
    faces += [Face(name, "nanum-gothic", path=str(nanum / f"{name}.ttf"), scripts=hangul) for name in NANUM_FACES]
    faces.append(Face("stroke-hangul", "stroke-hangul", scripts=frozenset({"hangul"}), digits=False))
    for face in faces:
        if face.path and not Path(face.path).is_file():
            raise SynthError(f"built-in font file {face.path} is missing: reinstall matplotlib / koreanize-matplotlib")
    return tuple(faces)


def _codepoints(path: Path) -> set[int]:
    from fontTools.ttLib import TTFont, TTLibError

    try:
        with TTFont(str(path), fontNumber=0, lazy=True) as font:
            cmap = font.getBestCmap() or {}
    except (TTLibError, OSError, ValueError, KeyError, AssertionError) as err:
        raise SynthError(f"{path}: not a readable TrueType/OpenType font ({err})") from None
    return set(cmap)


def font_scripts(path: Path, hangul: dict[str, str]) -> frozenset[str]:
    """What a font file can draw in the type slot; it must draw all ten digits.

    Raises:
        SynthError: naming the file when it is unreadable, lacks a digit, or can draw no type letter.
    """
    have = _codepoints(path)
    missing = [c for c in DIGITS if ord(c) not in have]
    if missing:
        raise SynthError(f"{path}: the font has no glyph for the digits {missing}")
    sets = {"hangul": "".join(hangul.values()), "upper": LETTERS.upper(), "lower": LETTERS}
    scripts = frozenset(name for name, chars in sets.items() if all(ord(c) in have for c in chars))
    if not scripts:
        raise SynthError(
            f"{path}: the font draws neither the Hangul type letters {list(hangul.values())} nor the "
            f"Latin letters A-E / a-e"
        )
    return scripts


def folder_faces(folder: str | Path, hangul: dict[str, str] = DEFAULT_HANGUL) -> tuple[Face, ...]:
    """The faces of every ``.ttf``/``.otf``/``.ttc`` file in ``folder`` (sorted by name), family ``user``.

    Raises:
        SynthError: when the folder does not exist, holds no font file, or one of its fonts cannot draw plates.
    """
    root = Path(folder)
    if not root.is_dir():
        raise SynthError(f"font folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file())
    if not files:
        raise SynthError(f"font folder {root} holds no font file ({', '.join(FONT_SUFFIXES)})")
    return tuple(Face(p.stem, "user", path=str(p), scripts=font_scripts(p, hangul)) for p in files)


# ---------------------------------------------------------------- drawing

# The five type syllables as strokes in a unit box: the consonant on the left, the vowel ㅏ on the right.
_CONSONANTS = {
    "가": [[(0.05, 0.22), (0.52, 0.22), (0.45, 0.85)]],
    "나": [[(0.1, 0.12), (0.1, 0.8), (0.58, 0.8)]],
    "다": [[(0.55, 0.2), (0.1, 0.2), (0.1, 0.8), (0.58, 0.8)]],
    "라": [[(0.08, 0.14), (0.52, 0.14), (0.52, 0.47), (0.1, 0.47), (0.1, 0.84), (0.58, 0.84)]],
    "마": [[(0.1, 0.2), (0.55, 0.2), (0.55, 0.8), (0.1, 0.8), (0.1, 0.2)]],
}
STROKE_SYLLABLES = tuple(_CONSONANTS)
_VOWEL_A = [[(0.78, 0.02), (0.78, 0.98)], [(0.78, 0.46), (0.97, 0.46)]]


def _stroke_hangul(text: str, weight: int) -> np.ndarray:
    """A syllable of :data:`_CONSONANTS` drawn as strokes, ``weight`` 0-4 from light to heavy."""
    if text not in _CONSONANTS:
        raise SynthError(f"the stroke-hangul face draws only {list(_CONSONANTS)}, not {text!r}")
    size = GLYPH_HEIGHT
    canvas = np.zeros((size + 24, size + 24), np.uint8)
    thickness = 6 + 3 * weight
    for stroke in _CONSONANTS[text] + _VOWEL_A:
        pts = (np.asarray(stroke) * size + 12).round().astype(np.int32)
        cv2.polylines(canvas, [pts], False, 255, thickness, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


@lru_cache(maxsize=4096)
def glyph(face: Face, text: str, weight: int = 2) -> np.ndarray:
    """A tightly cropped float32 alpha map (0-1) of ``text`` in ``face``, about GLYPH_HEIGHT tall.

    ``weight`` 0-4 thins (0, 1) or thickens (3, 4) the strokes; 2 is the face as designed.
    """
    if face.hershey is not None:
        canvas = np.zeros((160, 160), np.uint8)
        thickness = 3 + 2 * weight
        cv2.putText(canvas, text, (20, 130), face.hershey, 3.0, 255, thickness, cv2.LINE_AA)
        alpha = canvas.astype(np.float32) / 255.0
    elif face.path is None:
        alpha = _stroke_hangul(text, weight)
    else:
        from PIL import Image, ImageDraw

        font = _truetype(face.path)
        canvas = Image.new("L", (220, 200), 0)
        ImageDraw.Draw(canvas).text((30, 20), text, font=font, fill=255)
        alpha = np.asarray(canvas, dtype=np.float32) / 255.0
        if weight > 2:  # bolder strokes
            alpha = cv2.dilate(alpha, np.ones((3, 3), np.uint8), iterations=weight - 2)
        elif weight < 2:  # thinner strokes, unless that would erase a thin face's strokes
            thinner = cv2.erode(alpha, np.ones((3, 3), np.uint8), iterations=2 - weight)
            if (thinner > 0.5).sum() > 0.6 * (alpha > 0.5).sum():
                alpha = thinner
    ys, xs = np.nonzero(alpha > 0.05)
    if not len(xs):
        raise SynthError(f"{face.path or face.name}: draws nothing for {text!r}")
    return np.ascontiguousarray(alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


@lru_cache(maxsize=64)
def _truetype(path: str):
    from PIL import ImageFont

    try:
        return ImageFont.truetype(path, GLYPH_HEIGHT)
    except OSError as err:
        raise SynthError(f"{path}: cannot be opened as a font ({err})") from None


def glyph_contours(alpha: np.ndarray) -> list[np.ndarray]:
    """Outer outlines of a glyph alpha map, each ``(K, 2)`` float (x, y) in its pixels; never empty.

    A hairline face shrunk to a plate's line leaves strokes under a pixel wide that outline to
    nothing at half ink: such a glyph is outlined around its ink grown by a pixel, and one with no
    ink left at all by its box, so that every drawn character has a mask.
    """
    outlines = _outlines(alpha >= 0.5)
    if not outlines and alpha.max() > 0:
        ink = (alpha >= 0.5 * float(alpha.max())).astype(np.uint8)
        outlines = _outlines(cv2.dilate(ink, np.ones((3, 3), np.uint8)))
    if not outlines:
        h, w = alpha.shape
        outlines = [np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)]
    return outlines


def _outlines(mask: np.ndarray) -> list[np.ndarray]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2).astype(np.float64) for c in contours if cv2.contourArea(c) >= 2.0]
