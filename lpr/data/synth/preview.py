"""A contact sheet: synthetic images with their polygons drawn, to see what the model learns from."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from lpr.data.synth.scene import Styles, render_image
from lpr.outputs import make_dir, write_image

# BGR colours of the drawn polygons: characters, text regions, boards
_COLOURS = {"char": (0, 220, 255), "region": (255, 160, 0), "board": (0, 255, 0)}


def contact_sheet(
    path: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    width: int = 384,
    height: int = 288,
    columns: int = 4,
    heldout: bool = False,
    styles: Styles | None = None,
) -> Path:
    """Draw ``n`` scenes (training styles, or the held-out ones) in a grid with their polygons; write a PNG.

    Raises:
        ValueError: when ``n`` or ``columns`` is below 1.
    """
    if n < 1 or columns < 1:
        raise ValueError(f"n and columns must be >= 1, got n={n}, columns={columns}")
    styles = styles or Styles.for_split(heldout)
    tiles = []
    for i in range(n):
        image, instances = render_image(np.random.default_rng([seed, 9, i]), width, height, styles)
        for inst in instances:
            kind = "char" if len(inst.name) == 1 else "board" if inst.name.endswith("board") else "region"
            for poly in inst.polygons:
                pts = np.round(np.asarray(poly).reshape(-1, 2)).astype(np.int32)
                cv2.polylines(image, [pts], True, _COLOURS[kind], 1, cv2.LINE_AA)
            if inst.text:
                x, y = np.asarray(inst.polygons[0]).reshape(-1, 2).min(0)
                cv2.putText(image, inst.text, (int(x), max(10, int(y) - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                            (0, 255, 0), 1, cv2.LINE_AA)  # fmt: skip
        tiles.append(cv2.copyMakeBorder(image, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255)))
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[r : r + columns]) for r in range(0, len(tiles), columns)]
    make_dir(Path(path).parent)
    return write_image(path, np.vstack(rows))
