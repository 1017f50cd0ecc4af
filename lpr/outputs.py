"""Writing what the commands make: every failure is one :class:`OutputError` naming the path.

The command-line tools turn it into a one-line message and exit code 2, so a
read-only folder, a full disk or an output path that is a file never ends in a
traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


class OutputError(Exception):
    """An output folder or file cannot be written."""


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def make_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` (and its parents) unless it is a folder already.

    Raises:
        OutputError: ``path`` is a file, or cannot be created.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {what} {path}: {_why(e)}") from None
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file renamed over it: a failed write leaves the
    old file (if any) as it was and no partial file behind.

    Raises:
        OutputError: the folder is missing or read-only, the disk is full, ``path`` is a folder.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {_why(e)}") from None
    return path


def write_text(path: str | Path, text: str) -> Path:
    """:func:`write_bytes` for UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def write_image(path: str | Path, bgr: np.ndarray, params: tuple[int, ...] = ()) -> Path:
    """Encode ``bgr`` by ``path``'s suffix (PNG without one) and :func:`write_bytes` it.

    Raises:
        OutputError: the suffix names no format OpenCV writes, or the file cannot be written.
    """
    path = Path(path)
    try:
        ok, data = cv2.imencode(path.suffix or ".png", bgr, list(params))
    except cv2.error:
        ok = False
    if not ok:
        raise OutputError(f"cannot encode {path} as an image (suffix {path.suffix or 'none'})")
    return write_bytes(path, data.tobytes())
