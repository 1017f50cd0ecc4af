"""Reading plate text from detections (docs/metrics.md, EIR), shared by EIR and predict.

The rule, in short: keep confident detections, de-duplicate characters with a
class-agnostic NMS, then for every board take the best sub/main region whose
centre lies inside it and read the characters whose centres lie inside each
region, left to right. When the detections carry each character's class
probabilities (``char_probs``, what the character reader gives), a region's
text is the most probable one its pattern accepts (:func:`fit_pattern`).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

BOARD_TYPES = ("l_board", "r_board")
DEFAULT_SUB_PATTERN = r"^[0-9]{2,3}[a-e]$"  # 2 digits, or 3 on plates since 2019
DEFAULT_MAIN_PATTERN = r"^[0-9]{4}$"


@dataclass(frozen=True)
class PlateReading:
    """One board and the text read from it.

    Attributes:
        type: ``"l_board"`` (one line) or ``"r_board"`` (two lines).
        text: ``sub + main``, e.g. ``"12a3456"``.
        sub: the sub-number text (2 digits + letter when valid).
        main: the main-number text (4 digits when valid).
        box: the board box ``[x1, y1, x2, y2]``.
        score: the board detection score (1.0 for ground truth).
        valid: both texts match their patterns.
    """

    type: str
    text: str
    sub: str
    main: str
    box: tuple[float, float, float, float]
    score: float
    valid: bool
    center: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        x1, y1, x2, y2 = self.box
        object.__setattr__(self, "center", ((x1 + x2) / 2.0, (y1 + y2) / 2.0))

    def to_dict(self) -> dict:
        return {
            "type": self.type,
            "text": self.text,
            "sub": self.sub,
            "main": self.main,
            "box": [float(v) for v in self.box],
            "center": [float(v) for v in self.center],
            "score": float(self.score),
        }


def is_character_class(name: str) -> bool:
    """Digits and the vehicle-type letters are single-character class names."""
    return len(name) == 1 and name.isalnum()


def character_labels(classes: Sequence[str]) -> list[int]:
    """The model labels (``index + 1``) of the character classes of a class list."""
    return [i + 1 for i, name in enumerate(classes) if is_character_class(name)]


def letter_labels(classes: Sequence[str]) -> list[int]:
    """The model labels of the letter classes (the plate's type letter), a subset of :func:`character_labels`."""
    return [i + 1 for i, name in enumerate(classes) if is_character_class(name) and name.isalpha()]


def box_area_np(boxes: np.ndarray) -> np.ndarray:
    """Areas of xyxy boxes ``(N,4)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_inter_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas of xyxy boxes ``a (N,4)`` and ``b (M,4)``."""
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    return wh[..., 0] * wh[..., 1]


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a (N,4)`` and ``b (M,4)``; a union of 0 gives 1.0."""
    area_a, area_b = box_area_np(a), box_area_np(b)
    inter = box_inter_np(a, b)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)
    return iou


def one_per_plate(boxes: np.ndarray, order: Sequence[int], share: float = 0.8) -> list[int]:
    """Which of ``boxes`` (xyxy) remain when each one lying mostly (``share`` of the smaller box) inside
    a box before it in ``order`` (best first) is dropped: one plate found twice, as a one-line and a
    two-line board or as a second, looser box around it. Returns the kept indices in ascending order."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = box_area_np(boxes)
    inside = box_inter_np(boxes, boxes) / np.maximum(np.minimum(area[:, None], area[None, :]), 1e-9)
    kept: list[int] = []
    for i in order:
        if all(inside[i, k] < share for k in kept):
            kept.append(int(i))
    return sorted(kept)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> np.ndarray:
    """Greedy NMS; returns kept indices in descending score order (stable for ties)."""
    order = np.argsort(-scores, kind="stable")
    iou = box_iou_np(boxes, boxes)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_thr
    return np.asarray(keep, dtype=np.int64)


def _centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0], axis=1)


def _inside(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Which ``points (N,2)`` lie inside ``box`` (borders included)."""
    return (points[:, 0] >= box[0]) & (points[:, 0] <= box[2]) & (points[:, 1] >= box[1]) & (points[:, 1] <= box[3])


def fit_pattern(
    probs: np.ndarray, alphabet: Sequence[str], pattern: re.Pattern[str], *, max_tries: int = 2000
) -> str | None:
    """The most probable text that ``pattern`` matches, one character of ``alphabet`` per row of ``probs``.

    A text's probability is the product of its characters' probabilities (``probs[i, j]``: position
    ``i`` is ``alphabet[j]``). Texts are tried best first, each differing from a tried one in one
    position's next most probable character, so a plate whose first choices already fit costs one
    try, and one whose type letter was read as a digit a few.

    Returns:
        The text, or ``None`` when none of the ``max_tries`` most probable texts matches (e.g. a
        region holding one character too many).
    """
    if probs.shape[0] == 0:
        return "" if pattern.match("") else None
    order = np.argsort(-probs, axis=1, kind="stable")
    cost = -np.log(np.clip(np.take_along_axis(probs, order, axis=1), 1e-12, None))
    first = (0,) * probs.shape[0]
    heap, seen = [(float(cost[:, 0].sum()), first)], {first}
    for _ in range(max_tries):
        if not heap:
            break
        total, ranks = heapq.heappop(heap)
        text = "".join(alphabet[order[i, r]] for i, r in enumerate(ranks))
        if pattern.match(text):
            return text
        for i, r in enumerate(ranks):
            if r + 1 < probs.shape[1]:
                nxt = (*ranks[:i], r + 1, *ranks[i + 1 :])
                if nxt not in seen:
                    seen.add(nxt)
                    heapq.heappush(heap, (total - cost[i, r] + cost[i, r + 1], nxt))
    return None


def read_boards(
    boxes: Sequence | np.ndarray,
    labels: Sequence | np.ndarray,
    scores: Sequence | np.ndarray | None,
    classes: Sequence[str],
    *,
    score_thr: float = 0.5,
    char_nms_iou: float = 0.5,
    sub_pattern: str = DEFAULT_SUB_PATTERN,
    main_pattern: str = DEFAULT_MAIN_PATTERN,
    char_probs: Sequence | np.ndarray | None = None,
) -> list[PlateReading]:
    """Read every board, valid or not (see :func:`read_plates` for the arguments)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = np.ones(len(labels)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if not (len(boxes) == len(labels) == len(scores)):
        raise ValueError(
            f"boxes, labels and scores must have one row per detection, got {len(boxes)}, "
            f"{len(labels)} and {len(scores)}"
        )
    if len(labels) and (labels.min() < 1 or labels.max() > len(classes)):
        raise ValueError(f"labels must lie in 1..{len(classes)} (label = class index + 1), got {labels}")
    if char_probs is not None:
        char_probs = np.asarray(char_probs, dtype=np.float64)
        if char_probs.shape != (len(labels), len(classes)):
            raise ValueError(
                f"char_probs must be (detections, classes) = ({len(labels)}, {len(classes)}), got {char_probs.shape}"
            )
    keep = scores >= score_thr
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    names = np.asarray([classes[i - 1] for i in labels], dtype=object)
    if char_probs is not None:  # the characters' columns only, in the alphabet's order
        char_columns = np.asarray(character_labels(classes), dtype=np.int64) - 1
        alphabet = [classes[j] for j in char_columns]
        char_probs = char_probs[keep][:, char_columns]

    is_char = np.asarray([is_character_class(n) for n in names], dtype=bool)
    char_idx = np.flatnonzero(is_char)
    if len(char_idx):
        char_idx = char_idx[_nms(boxes[char_idx], scores[char_idx], char_nms_iou)]
    char_centres = _centres(boxes[char_idx]) if len(char_idx) else np.zeros((0, 2))
    centres = _centres(boxes) if len(boxes) else np.zeros((0, 2))

    def read_region(board_idx: int, region_name: str, pattern: re.Pattern[str]) -> str:
        candidates = np.flatnonzero((names == region_name) & _inside(centres, boxes[board_idx]))
        if not len(candidates):
            return ""
        region = candidates[np.argmax(scores[candidates])]  # argmax: first of equal scores
        members = char_idx[_inside(char_centres, boxes[region])]
        members = members[np.argsort(_centres(boxes[members])[:, 0], kind="stable")]
        text = "".join(names[members])
        if char_probs is not None and not pattern.match(text):
            text = fit_pattern(char_probs[members], alphabet, pattern) or text
        return text

    sub_re, main_re = re.compile(sub_pattern), re.compile(main_pattern)
    readings = []
    for b in np.flatnonzero(np.isin(names, BOARD_TYPES)):
        prefix = names[b][0]
        sub, main = read_region(b, f"{prefix}_s_n", sub_re), read_region(b, f"{prefix}_m_n", main_re)
        readings.append(
            PlateReading(
                type=str(names[b]),
                text=sub + main,
                sub=sub,
                main=main,
                box=tuple(float(v) for v in boxes[b]),
                score=float(scores[b]),
                valid=bool(sub_re.match(sub) and main_re.match(main)),
            )
        )
    return readings


def read_plates(
    boxes: Sequence | np.ndarray,
    labels: Sequence | np.ndarray,
    scores: Sequence | np.ndarray | None,
    classes: Sequence[str],
    *,
    score_thr: float = 0.5,
    char_nms_iou: float = 0.5,
    sub_pattern: str = DEFAULT_SUB_PATTERN,
    main_pattern: str = DEFAULT_MAIN_PATTERN,
    char_probs: Sequence | np.ndarray | None = None,
) -> list[PlateReading]:
    """Read the plates in one image's detections (docs/metrics.md, EIR).

    Args:
        boxes: ``(N, 4)`` xyxy boxes in pixels.
        labels: ``(N,)`` int labels, ``1..len(classes)`` (label = class index + 1).
        scores: ``(N,)`` scores, or ``None`` for ground truth (all 1.0).
        classes: the class names, e.g. the 21 plate classes.
        score_thr: detections below this score are ignored.
        char_nms_iou: class-agnostic NMS IoU threshold among characters.
        sub_pattern: regular expression the sub-number text must match.
        main_pattern: regular expression the main-number text must match.
        char_probs: ``(N, len(classes))``, optional: for a character detection, the probability
            of each class (0 for the classes that are no character); the rows of other detections
            are not read. With them, a region whose labels do not match its pattern reads as the
            most probable text that does (:func:`fit_pattern`), e.g. a type letter whose pixels
            looked most like ``0`` as the most likely letter.

    Returns:
        The valid readings, one per readable board, in detection order.
    """
    return [
        r
        for r in read_boards(
            boxes,
            labels,
            scores,
            classes,
            score_thr=score_thr,
            char_nms_iou=char_nms_iou,
            sub_pattern=sub_pattern,
            main_pattern=main_pattern,
            char_probs=char_probs,
        )
        if r.valid
    ]
