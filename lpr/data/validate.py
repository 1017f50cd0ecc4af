"""Check a COCO instances file before any training starts (README, Data sets).

Every problem found is collected, and one ``ValueError`` lists them, naming the
file, image and annotation ids, so a user can fix the data set in one pass.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

BOX_TOLERANCE = 1.0  # pixels: annotation tools round coordinates
MAX_LISTED = 20
MAX_IMAGE_PIXELS = 40_000_000  # a 40 MP photo is 0.5 GB as a float tensor, before masks and the model


class DataValidationError(ValueError):
    """A data set does not satisfy the COCO contract lpr relies on."""


class ClassMismatchError(DataValidationError):
    """A data set's category names are not the model's class names."""


def load_coco_json(path: str | Path) -> dict:
    """Read a COCO JSON file; a missing file or a syntax error gives a clear ``DataValidationError``."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataValidationError(
            f"annotation file {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    except UnicodeDecodeError as e:
        raise DataValidationError(f"annotation file {path} is not UTF-8 text: {e}") from None
    if not isinstance(data, dict):
        raise DataValidationError(f"annotation file {path}: expected a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataValidationError(f"annotation file {path}: missing or non-list '{key}'")
    return data


def _duplicates(items: list[dict], key: str) -> list:
    return [k for k, n in Counter(item.get(key) for item in items).items() if n > 1]


def _check_segmentation(seg, ann_id, width: int, height: int) -> str | None:
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) % 2 or len(poly) < 6:
                n = len(poly) / 2 if isinstance(poly, list) else "?"
                return f"annotation {ann_id}: polygon with {n} points (need >= 3 (x, y) pairs)"
            if not all(is_number(v) for v in poly):
                return f"annotation {ann_id}: polygon coordinates must be finite numbers"
        return None
    if isinstance(seg, dict):
        size = seg.get("size")
        counts = seg.get("counts")
        if not (
            isinstance(size, list)
            and len(size) == 2
            and (isinstance(counts, str) or (isinstance(counts, list) and all(is_int(c) for c in counts)))
        ):
            return f"annotation {ann_id}: RLE segmentation needs 'size' [h, w] and 'counts' (a string or integers)"
        if list(size) != [height, width]:
            return f"annotation {ann_id}: RLE size {size} differs from the image size [{height}, {width}]"
        return None
    return f"annotation {ann_id}: segmentation must be a list of polygons or an RLE dict"


def read_image_bgr(path: str | Path) -> np.ndarray:
    """Decode an image file as BGR uint8 ``(H, W, 3)``; grayscale is expanded, alpha dropped.

    Raises:
        OSError: the file is missing, empty, a truncated JPEG, or not a decodable image.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise OSError(f"cannot read image {path}: {e.strerror or e}") from None
    return decode_image_bgr(data, f"image {path}")


def decode_image_bgr(data: bytes, name: str = "image") -> np.ndarray:
    """Decode an encoded image (jpg, png, ...) as BGR uint8 ``(H, W, 3)``.

    OpenCV decodes a truncated JPEG without an error (the missing part comes out
    grey), so a JPEG must also end with its end-of-image marker.

    Raises:
        OSError: ``data`` is empty, a truncated JPEG, or not a decodable image (``name`` says which).
    """
    if not data:
        raise OSError(f"{name} is an empty file")
    if data[:2] == b"\xff\xd8" and data.rstrip(b"\x00\r\n ")[-2:] != b"\xff\xd9":
        raise OSError(f"{name} is a truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"{name} cannot be decoded (corrupt or not an image)")
    return image


def _image_problem(path: Path, width: int, height: int, full: bool) -> str | None:
    if not path.is_file():
        return f"image {path} does not exist"
    if full:
        try:
            h, w = read_image_bgr(path).shape[:2]
        except OSError as e:
            return str(e)
    else:
        from PIL import Image

        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception as e:  # PIL raises many types for unreadable files
            return f"image {path} cannot be read: {e}"
    if (w, h) != (width, height):
        return f"image {path} is {w}x{h} but the JSON says {width}x{height}"
    return None


def validate_coco(
    data: dict,
    image_root: str | Path,
    *,
    source: str = "<json>",
    check_images: str = "full",
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    allow_outside_root: bool = False,
) -> None:
    """Raise one ``DataValidationError`` listing every problem of a COCO data set.

    Args:
        data: the parsed COCO instances JSON.
        image_root: folder the images' ``file_name`` is relative to.
        source: the JSON file name, for messages.
        check_images: ``"full"`` decodes every image (finds truncated files),
            ``"header"`` only reads sizes, ``"none"`` skips image files.
        max_pixels: the largest image (width x height) allowed; ``None`` for no limit.
        allow_outside_root: accept a ``file_name`` that is absolute or leads out of
            ``image_root`` with ``..`` (refused by default: a typo or a foreign file).

    Raises:
        DataValidationError: empty split, duplicate ids, unknown category or image ids,
            numbers that are not finite, bad polygons/RLE, boxes outside the image, images
            over ``max_pixels`` or outside ``image_root``, missing or unreadable images.
    """
    if check_images not in ("full", "header", "none"):
        raise ValueError(f"check_images must be 'full', 'header' or 'none', got {check_images!r}")
    problems: list[str] = []
    images, annotations, categories = data["images"], data["annotations"], data["categories"]
    if not images:
        raise DataValidationError(f"{source}: the split is empty (no images)")
    # Structure first: everything below indexes by integer ids.
    for what, items in (("image", images), ("annotation", annotations), ("category", categories)):
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not is_int(item.get("id")):
                problems.append(f"{what} #{i}: must be an object with an integer 'id', got {str(item)[:80]}")
    for im in images:
        if isinstance(im, dict) and not (
            is_int(im.get("width")) and is_int(im.get("height")) and isinstance(im.get("file_name"), str)
        ):
            problems.append(f"image {im.get('id')}: needs integer 'width', 'height' and a 'file_name'")
        elif isinstance(im, dict):
            problems += _image_entry_problems(im, Path(image_root), max_pixels, allow_outside_root)
    for c in categories:
        if isinstance(c, dict) and not isinstance(c.get("name"), str):
            problems.append(f"category {c.get('id')}: needs a string 'name', got {c.get('name')!r}")
    for a in annotations:
        if isinstance(a, dict) and not (is_int(a.get("image_id")) and is_int(a.get("category_id"))):
            problems.append(f"annotation {a.get('id')}: needs integer 'image_id' and 'category_id'")
    if problems:
        _raise(source, problems)
    if not categories:
        problems.append("no categories")
    for what, items in (("image", images), ("annotation", annotations), ("category", categories)):
        if dup := _duplicates(items, "id"):
            problems.append(f"duplicate {what} ids: {dup[:10]}")
    if dup := _duplicates(categories, "name"):
        problems.append(f"duplicate category names: {dup[:10]}")

    cat_ids = {c.get("id") for c in categories}
    by_id = {im.get("id"): im for im in images}
    for ann in annotations:
        aid = ann.get("id")
        im = by_id.get(ann.get("image_id"))
        if im is None:
            problems.append(f"annotation {aid}: unknown image_id {ann.get('image_id')}")
            continue
        if ann.get("category_id") not in cat_ids:
            problems.append(f"annotation {aid} ({im.get('file_name')}): unknown category id {ann.get('category_id')}")
        w, h = im.get("width", 0), im.get("height", 0)
        bbox = ann.get("bbox")
        for key in ("area", "score"):
            if key in ann and not is_number(ann[key]):
                problems.append(
                    f"annotation {aid} ({im.get('file_name')}): '{key}' must be a finite number, got {ann[key]}"
                )
        if ann.get("iscrowd", 0) not in (0, 1):
            problems.append(f"annotation {aid} ({im.get('file_name')}): 'iscrowd' must be 0 or 1, got {ann['iscrowd']}")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
            problems.append(
                f"annotation {aid} ({im.get('file_name')}): bbox must be 4 finite numbers [x, y, w, h], got {bbox}"
            )
        else:
            x, y, bw, bh = bbox
            if bw <= 0 or bh <= 0:
                problems.append(f"annotation {aid} ({im.get('file_name')}): empty box {bbox}")
            elif x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + bw > w + BOX_TOLERANCE or y + bh > h + BOX_TOLERANCE:
                problems.append(f"annotation {aid} ({im.get('file_name')}): box {bbox} lies outside the {w}x{h} image")
        if "segmentation" not in ann:
            problems.append(f"annotation {aid} ({im.get('file_name')}): no segmentation")
        elif msg := _check_segmentation(ann["segmentation"], aid, w, h):
            problems.append(f"{msg} ({im.get('file_name')})")

    if check_images != "none" and not problems:
        root = Path(image_root)
        jobs = [(root / im["file_name"], im["width"], im["height"]) for im in images]
        with ThreadPoolExecutor(4) as pool:  # cv2 releases the GIL while decoding
            found = pool.map(lambda j: _image_problem(*j, full=check_images == "full"), jobs)
            problems += [p for p in found if p]

    if problems:
        _raise(source, problems)


def is_int(v) -> bool:
    """An int that is not a bool (JSON's and YAML's true/false)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """An int or a finite float (JSON's NaN and Infinity, which Python reads, are not)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _image_entry_problems(im: dict, root: Path, max_pixels: int | None, allow_outside_root: bool) -> list[str]:
    """What is wrong with one image entry's size and ``file_name``, before any file is opened."""
    problems = []
    w, h, name = im["width"], im["height"], im["file_name"]
    if w <= 0 or h <= 0:
        problems.append(f"image {im['id']} ({name}): size {w}x{h} must be positive")
    elif max_pixels is not None and w * h > max_pixels:
        problems.append(
            f"image {im['id']} ({name}): {w}x{h} is {w * h / 1e6:.3g} MP, more than the {max_pixels / 1e6:g} MP "
            "allowed (data.max_image_pixels): downscale it and its annotations, or raise the limit"
        )
    if not allow_outside_root and not inside(root, name):
        problems.append(
            f"image {im['id']}: file_name {name!r} lies outside the image root {root} "
            "(set data.allow_outside_root=true to read it anyway)"
        )
    return problems


def inside(root: Path, name: str) -> bool:
    """Whether ``root / name`` stays under ``root`` as written (an absolute ``name`` or one climbing
    out with ``..`` does not; symbolic links are not followed: a folder of links is a valid root)."""
    root_path = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.abspath(root / name))
    return os.path.commonpath([root_path, path]) == root_path


def _raise(source: str, problems: list[str]) -> None:
    listed = "\n  - ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise DataValidationError(f"{source}: {len(problems)} problem(s) in the data set:\n  - {listed}{more}")


def match_classes(names: list[str], classes: list[str], source: str, *, shared_only: bool = False) -> list[str]:
    """Raise unless a data set's category ``names`` are the model's ``classes`` in some order;
    with ``shared_only``, unless the two share a name. Returns the names the model lacks (their
    annotations go unscored; always empty without ``shared_only``).

    Raises:
        ClassMismatchError: listing the names only the data set has and those it lacks.
    """
    extra = [n for n in names if n not in classes]
    missing = [n for n in classes if n not in names]
    if shared_only and len(extra) == len(names):
        raise ClassMismatchError(f"{source}: no category is among the model's classes {classes} (it has {names})")
    if (extra or missing) and not shared_only:
        raise ClassMismatchError(
            f"{source}: the categories differ from the model's classes (matched by name, in any order "
            f"and with any ids): not among the model's {extra}, missing from the data set {missing}"
        )
    return extra


def class_names(data: dict) -> list[str]:
    """The class list: category names sorted by category id (label = index + 1)."""
    return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]


def bbox_xywh_to_xyxy(bboxes: list[list[float]]) -> np.ndarray:
    b = np.asarray(bboxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
