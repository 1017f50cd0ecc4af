"""Plates followed across video frames, one event per plate: the text voted over its frames.

A camera sees a passing car for dozens of frames, and single frames misread (blur,
a glint, an occluded character). :class:`PlateTracker` links each frame's plate
readings to the tracks of the frames before by box overlap (IoU, or the centre
inside the last box for a plate that moved far), and a track that has not been
seen for ``max_gap`` frames is finished: its event carries the text voted over
its readings (:func:`vote`), the frames and times it spans, and its best frame's
box. A board found in a frame but not read as a plate (a character missed, a
glint) still continues its track, without a reading, so that a few misread
frames in a row do not split one passing plate into two events; a board found
twice in one frame (a second, looser box around it) is one sighting. Works on the
result dicts of :mod:`lpr.results` (no torch).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lpr.plates import box_iou_np, one_per_plate


def vote(readings: Sequence[tuple[str, float]]) -> tuple[str, float]:
    """The text of ``(text, score)`` readings voted per character position, and its confidence.

    The length is the one with the largest total score; among the readings of that length each
    position takes the character with the largest total score. The confidence is the mean, over
    positions, of the winner's share of that position's score (1.0: all readings agree).
    """
    if not readings:
        return "", 0.0
    by_length: dict[int, float] = collections.defaultdict(float)
    for text, score in readings:
        by_length[len(text)] += score
    length = max(by_length, key=lambda n: (by_length[n], n))
    same = [(text, score) for text, score in readings if len(text) == length]
    chars, shares = [], []
    for i in range(length):
        weights: dict[str, float] = collections.defaultdict(float)
        for text, score in same:
            weights[text[i]] += score
        best = max(weights, key=lambda c: (weights[c], c))
        chars.append(best)
        shares.append(weights[best] / max(sum(weights.values()), 1e-12))
    agreeing = by_length[length] / max(sum(by_length.values()), 1e-12)
    return "".join(chars), float(np.mean(shares) * agreeing) if shares else 0.0


@dataclass
class Track:
    """One plate followed across frames."""

    id: int
    box: np.ndarray  # the last box seen
    last_step: int  # the tracker's update count when it was last seen
    readings: list[tuple[str, float]] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    best: tuple[float, int, list[float]] = (-1.0, -1, [])  # score, frame, box
    crop: np.ndarray | None = None  # the board in the best frame, where the frames were given

    def add(self, step: int, frame: int, time_s: float, plate: dict, image: np.ndarray | None = None) -> None:
        self.box = np.asarray(plate["box"], dtype=np.float64)
        self.last_step = step
        self.readings.append((plate["text"], float(plate["score"])))
        self.frames.append(frame)
        self.times.append(time_s)
        self.types.append(plate["type"])
        if plate["score"] > self.best[0]:
            self.best = (float(plate["score"]), frame, [float(v) for v in plate["box"]])
            if image is not None:
                x1, y1, x2, y2 = (int(np.rint(v)) for v in plate["box"])
                h, w = image.shape[:2]
                self.crop = image[max(0, y1) : min(h, y2), max(0, x1) : min(w, x2)].copy()

    def seen(self, step: int, box) -> None:
        """The board was found again in update ``step`` but not read as a plate: it moves the track on,
        without a reading."""
        self.box = np.asarray(box, dtype=np.float64)
        self.last_step = step

    def event(self) -> dict:
        text, confidence = vote(self.readings)
        return {
            "track": self.id,
            "text": text,
            "confidence": round(confidence, 4),
            "type": collections.Counter(self.types).most_common(1)[0][0],
            "readings": len(self.readings),
            "first_frame": self.frames[0],
            "last_frame": self.frames[-1],
            "first_time_s": round(self.times[0], 3),
            "last_time_s": round(self.times[-1], 3),
            "best_frame": self.best[1],
            "box": [round(v, 1) for v in self.best[2]],
        }


class PlateTracker:
    """Links plate readings frame by frame into tracks and finishes the tracks that are gone.

    Args:
        iou_thresh: a plate continues the track whose last box it overlaps most, at this IoU or more
            (or whose last box holds its centre).
        max_gap: a track not seen in more than this many updates (frames read) in a row is finished.
        min_readings: finished tracks with fewer readings are dropped as noise.
    """

    def __init__(self, iou_thresh: float = 0.3, max_gap: int = 5, min_readings: int = 2) -> None:
        if not 0.0 <= iou_thresh <= 1.0:
            raise ValueError(f"iou_thresh must be in [0, 1], got {iou_thresh}")
        if max_gap < 0 or min_readings < 1:
            raise ValueError(f"max_gap must be >= 0 and min_readings >= 1, got {max_gap} and {min_readings}")
        self.iou_thresh, self.max_gap, self.min_readings = iou_thresh, max_gap, min_readings
        self.active: list[Track] = []
        self._next_id = 1
        self._step = 0

    def update(
        self,
        frame: int,
        time_s: float,
        plates: Sequence[dict],
        image: np.ndarray | None = None,
        boards: Sequence[Sequence[float]] = (),
    ) -> list[Track]:
        """Add the plates (result dicts' ``plates``) of source frame ``frame`` at ``time_s`` seconds
        (``image``: the frame, to keep a crop of each track's best board); returns the tracks it finished
        (:meth:`Track.event` gives each one's event).

        ``boards``: the boxes of every board found in the frame (its ``l_board``/``r_board``
        detections). Those that are none of ``plates`` (IoU under 0.5 with each) were not read as
        a plate: they continue their tracks (or start one) without a reading.
        """
        self._step += 1
        unread = _unread_boards(plates, boards)
        sightings = _one_per_plate([*plates, *({"box": box} for box in unread)])
        free = list(range(len(sightings)))
        if self.active and sightings:
            last = np.stack([t.box for t in self.active])
            boxes = np.asarray([p["box"] for p in sightings], dtype=np.float64)
            iou = box_iou_np(last, boxes)
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = (
                (centres[None, :, 0] >= last[:, None, 0]) & (centres[None, :, 0] <= last[:, None, 2])
                & (centres[None, :, 1] >= last[:, None, 1]) & (centres[None, :, 1] <= last[:, None, 3])
            )  # fmt: skip
            score = np.where((iou >= self.iou_thresh) | inside, iou + 1e-6, -1.0)
            while free and (score > 0).any():  # greedy: the best pair first
                t, p = np.unravel_index(np.argmax(score), score.shape)
                self._add(self.active[t], frame, time_s, sightings[p], image)
                score[t, :] = score[:, p] = -1.0
                free.remove(int(p))
        for p in free:
            track = Track(self._next_id, np.asarray(sightings[p]["box"], dtype=np.float64), self._step)
            self._add(track, frame, time_s, sightings[p], image)
            self.active.append(track)
            self._next_id += 1
        done = [t for t in self.active if self._step - t.last_step > self.max_gap]
        self.active = [t for t in self.active if t not in done]
        return [t for t in done if len(t.readings) >= self.min_readings]

    def _add(self, track: Track, frame: int, time_s: float, sighting: dict, image: np.ndarray | None) -> None:
        if "text" in sighting:
            track.add(self._step, frame, time_s, sighting, image)
        else:
            track.seen(self._step, sighting["box"])

    @property
    def step(self) -> int:
        """How many updates (frames read) the tracker has had: a track with ``last_step == step`` was seen
        in the last one."""
        return self._step

    def finish(self) -> list[Track]:
        """Every track still open (at the end of a stream), as :meth:`update` returns them."""
        done, self.active = self.active, []
        return [t for t in done if len(t.readings) >= self.min_readings]


def _one_per_plate(sightings: list[dict], share: float = 0.8) -> list[dict]:
    """A frame's sightings less each one lying mostly inside a better one (:func:`lpr.plates.one_per_plate`):
    readings are better than unread boards, then the higher score; the order is kept."""
    if len(sightings) < 2:
        return sightings
    better_first = sorted(
        range(len(sightings)), key=lambda i: ("text" not in sightings[i], -sightings[i].get("score", 0.0))
    )
    kept = one_per_plate(np.asarray([s["box"] for s in sightings]), better_first, share)
    return [sightings[i] for i in kept]


def _unread_boards(plates: Sequence[dict], boards: Sequence[Sequence[float]]) -> np.ndarray:
    """The ``boards`` boxes that overlap no plate's box by IoU 0.5 or more."""
    boxes = np.asarray(boards, dtype=np.float64).reshape(-1, 4)
    if not len(boxes) or not plates:
        return boxes
    read = np.asarray([p["box"] for p in plates], dtype=np.float64)
    return boxes[box_iou_np(boxes, read).max(1) < 0.5]
