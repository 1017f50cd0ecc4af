"""Reading plates from a video file, a camera or a stream: one event per plate passing by.

``python -m lpr.predict ckpt_path=CKPT input=cam.mp4 output=DIR [every_n_frames=1] [max_frames=null]``
(or ``input=0`` for camera 0, ``input=rtsp://...``). Every ``every_n_frames``-th frame is
read; plates are followed across frames (:class:`lpr.tracks.PlateTracker`; a board found
but not read in a frame keeps its track going), and each
finished track is one line of ``DIR/events.jsonl``, written and flushed as it
finishes, with a crop of its best board in ``DIR/crops/``. With ``video=NAME`` the frames
read are also written, drawn, as ``DIR/NAME`` (each plate labelled with its track and the
text voted so far). Ctrl-C stops cleanly: the open tracks are finished and written, and the
video is closed playable.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from lpr.draw import draw_result
from lpr.outputs import OutputError, make_dir, write_image
from lpr.plates import BOARD_TYPES
from lpr.results import ReaderBase
from lpr.tracks import PlateTracker, Track

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}
# the codec an annotated video is written with, by its suffix (what OpenCV's own builds can write)
WRITE_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class StreamError(OSError):
    """A video file, camera or stream that cannot be opened or read."""


def is_stream(source: str | Path) -> bool:
    """Whether ``source`` names a video: a file with a video suffix, a camera index, or a URL."""
    text = str(source)
    return text.isdigit() or "://" in text or Path(text).suffix.lower() in VIDEO_SUFFIXES


def open_capture(source: str | Path) -> cv2.VideoCapture:
    text = str(source)
    if not text.isdigit() and "://" not in text and not Path(text).is_file():
        raise StreamError(f"video {text} does not exist")
    capture = cv2.VideoCapture(int(text) if text.isdigit() else text)
    if not capture.isOpened():
        what = f"camera {text}" if text.isdigit() else f"video {text}"
        raise StreamError(f"{what} cannot be opened (not a video OpenCV can read, or not reachable)")
    return capture


class AnnotatedVideo:
    """The frames read, drawn with their detections and each plate's track and voted text, as a video."""

    def __init__(self, path: Path, fps: float) -> None:
        codec = WRITE_CODECS.get(path.suffix.lower())
        if codec is None:
            raise OutputError(f"video={path.name}: write .mp4 or .avi (or {', '.join(sorted(WRITE_CODECS))})")
        if path.exists():
            raise OutputError(f"{path} exists: name another video (nothing is overwritten)")
        self.path, self.fps, self.codec = path, fps, codec
        self.writer: cv2.VideoWriter | None = None

    def write(self, bgr, result: dict, tracker: PlateTracker) -> None:
        canvas = draw_result(bgr, result)
        for track in tracker.active:
            if track.last_step == tracker.step and track.readings:  # seen in this frame, read before
                left, bottom = round(track.box[0]), round(track.box[3])
                label = f"#{track.id} {track.event()['text']}"
                scale = max(0.4, canvas.shape[1] / 1000)
                origin = (left, bottom + int(22 * scale))  # under the board: its reading is drawn above it
                cv2.putText(canvas, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 255, 255), 2)
        if self.writer is None:
            h, w = canvas.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.codec), self.fps, (w, h))
            if not self.writer.isOpened():
                raise OutputError(f"cannot write video {self.path} (OpenCV has no {self.codec} writer here)")
        self.writer.write(canvas)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def read_stream(
    reader: ReaderBase,
    source: str | Path,
    output: str | Path,
    *,
    every_n_frames: int = 1,
    max_frames: int | None = None,
    tracker: PlateTracker | None = None,
    video: str | None = None,
    verbose: bool = True,
) -> dict:
    """Read plates from every ``every_n_frames``-th frame of ``source`` (up to ``max_frames`` frames of
    the source) and write one event per track to ``output/events.jsonl``; with ``video`` (a file name),
    the frames read drawn as ``output/video``, at the source's frame rate over ``every_n_frames``.

    Returns:
        ``{"frames", "frames_read", "events", "seconds", "frames_per_s", "interrupted"}``.
    """
    if every_n_frames < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"every_n_frames and max_frames must be >= 1, got {every_n_frames} and {max_frames}")
    capture = open_capture(source)
    out = make_dir(output)
    crops = out / "crops"
    tracker = tracker or PlateTracker()
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    try:
        annotated = None if video is None else AnnotatedVideo(out / video, (fps or 25.0) / every_n_frames)
    except OutputError:
        capture.release()
        raise
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    total = min(total, max_frames) if max_frames and total > 0 else (max_frames or total)
    frame = read = events = 0
    interrupted = False
    start = time.perf_counter()
    bar = tqdm(total=total or None, unit="frame", disable=not sys.stderr.isatty())
    with open(out / "events.jsonl", "a", encoding="utf-8") as log:

        def write(finished: list[Track]) -> None:
            nonlocal events
            for track in finished:
                event = track.event()
                if track.crop is not None and track.crop.size:
                    make_dir(crops)
                    name = f"track_{track.id:05d}.jpg"
                    write_image(crops / name, track.crop, (cv2.IMWRITE_JPEG_QUALITY, 95))
                    event["crop"] = f"crops/{name}"
                log.write(json.dumps(event, ensure_ascii=False) + "\n")
                log.flush()
                events += 1
                if verbose:
                    span = f"frames {event['first_frame']}-{event['last_frame']}"
                    said = f"{event['text']} ({event['confidence']:.2f}, {event['readings']} readings)"
                    tqdm.write(f"{span}: {said}", file=sys.stdout)

        try:
            while max_frames is None or frame < max_frames:
                ok, bgr = capture.read()
                if not ok:
                    break
                if frame % every_n_frames == 0:
                    if not read:
                        try:
                            reader.region(bgr.shape[1], bgr.shape[0])
                        except ValueError as e:
                            raise StreamError(f"{source}: {e}") from None
                    time_s = frame / fps if fps > 0 else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                    result = reader.read([bgr], color="bgr")[0]
                    boards = [d["box"] for d in result["detections"] if d["label"] in BOARD_TYPES]
                    write(tracker.update(frame, time_s, result["plates"], bgr, boards))
                    if annotated is not None:
                        annotated.write(bgr, result, tracker)
                    read += 1
                frame += 1
                bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            capture.release()
            if annotated is not None:
                annotated.close()
            write(tracker.finish())
            bar.close()
    seconds = time.perf_counter() - start
    return {
        "frames": frame,
        "frames_read": read,
        "events": events,
        "seconds": seconds,
        "frames_per_s": frame / seconds if seconds > 0 else 0.0,
        "interrupted": interrupted,
        "video": None if annotated is None or annotated.writer is None else str(annotated.path),
    }
