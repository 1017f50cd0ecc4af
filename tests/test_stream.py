"""Video input: plates followed across frames give one event each, with the voted text."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import sigint_default

from lpr.data.synth import generate
from lpr.outputs import OutputError
from lpr.results import ReaderBase
from lpr.stream import StreamError, read_stream
from lpr.tracks import PlateTracker, vote

TEXT = "12a3456"


def write_video(path: Path, frames: int = 24, blurred: int = 10) -> None:
    """A bright board moving right over a noisy dark scene; frame ``blurred`` is motion-blurred."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    rng = np.random.default_rng(0)
    for i in range(frames):
        frame = rng.integers(0, 60, (240, 320, 3), dtype=np.uint8)
        x = 20 + 8 * i
        cv2.rectangle(frame, (x, 100), (x + 90, 125), (235, 235, 235), -1)
        cv2.putText(frame, "12 3456", (x + 5, 120), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 2)
        if i == blurred:
            frame = cv2.blur(frame, (15, 1))
        writer.write(frame)
    writer.release()


class BrightBoardReader(ReaderBase):
    """A stand-in for the model (the model's own reading is tested elsewhere): the board is the bright
    region of the frame; its text is TEXT, misread in a blurred frame (low Laplacian variance). In the
    calls numbered in ``unread`` (0-based) the board is found but read as no plate, and with
    ``boards=False`` its detection is not reported either; in those numbered in ``loose`` it is
    also found a second time, as a looser box around it that reads the same."""

    def __init__(self, roi=None, unread=(), boards=True, loose=()) -> None:
        super().__init__(["dummy"], roi=roi)
        self.frames, self.unread, self.boards, self.loose = 0, set(unread), boards, set(loose)

    def read(self, images, *, color="bgr"):
        call, self.frames = self.frames, self.frames + 1
        gray = cv2.cvtColor(images[0], cv2.COLOR_BGR2GRAY)
        ys, xs = np.nonzero(gray > 200)
        if not len(xs):
            return [{"detections": [], "plates": []}]
        board = gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        sharp = cv2.Laplacian(board, cv2.CV_64F).var() > 4000
        text = TEXT if sharp else "12a3488"
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        plate = {"type": "l_board", "text": text, "box": box, "score": 0.9 if sharp else 0.6}
        detections = [{"label": "l_board", "score": 0.95, "box": [round(v, 1) for v in box], "polygon": []}]
        plates = [] if call in self.unread else [plate]
        if call in self.loose:  # overlapping the board by IoU under 0.5, so NMS keeps both
            wide = [box[0] - 60.0, box[1] - 20.0, box[2] + 10.0, box[3] + 60.0]
            plates.append({**plate, "box": wide, "score": 0.7})
            detections.append({"label": "l_board", "score": 0.7, "box": wide, "polygon": []})
        return [{"detections": detections if self.boards else [], "plates": plates}]


def test_a_plate_passing_by_is_one_event_with_the_voted_text(tmp_path):
    video = tmp_path / "road.avi"
    write_video(video)
    reader = BrightBoardReader()
    stats = read_stream(reader, video, tmp_path / "out", every_n_frames=2, verbose=False)
    assert stats["frames"] == 24 and stats["frames_read"] == reader.frames == 12 and not stats["interrupted"]
    assert reader.read([cv2.blur(np.full((50, 120, 3), 240, np.uint8), (15, 1))])[0]["plates"][0]["text"] != TEXT
    lines = (tmp_path / "out" / "events.jsonl").read_text().splitlines()
    assert len(lines) == 1 and stats["events"] == 1
    event = json.loads(lines[0])
    assert event["text"] == TEXT and event["readings"] == 12
    assert (event["first_frame"], event["last_frame"]) == (0, 22)
    assert event["last_time_s"] == pytest.approx(22 / 25, abs=1e-3)
    assert 0.5 < event["confidence"] < 1.0  # one reading disagreed
    crop = cv2.imread(str(tmp_path / "out" / event["crop"]))
    assert crop is not None and crop.shape[:2] == (26, 91)  # the board of the best frame


def test_frames_where_the_board_is_found_but_not_read_keep_its_track(tmp_path):
    video = tmp_path / "road.avi"
    write_video(video)
    unread = range(6, 16)  # ten frames in a row: twice the tracker's max_gap
    stats = read_stream(BrightBoardReader(unread=unread), video, tmp_path / "found", verbose=False)
    events = [json.loads(line) for line in (tmp_path / "found" / "events.jsonl").read_text().splitlines()]
    assert stats["frames_read"] == 24 and len(events) == 1
    assert events[0]["text"] == TEXT and events[0]["readings"] == 14
    assert (events[0]["first_frame"], events[0]["last_frame"]) == (0, 23)
    # without the board's detection the same readings split into two events
    read_stream(BrightBoardReader(unread=unread, boards=False), video, tmp_path / "lost", verbose=False)
    events = [json.loads(line) for line in (tmp_path / "lost" / "events.jsonl").read_text().splitlines()]
    assert [(e["first_frame"], e["last_frame"]) for e in events] == [(0, 5), (16, 23)]


def test_a_board_found_twice_in_a_frame_is_one_plate(tmp_path):
    video = tmp_path / "road.avi"
    write_video(video)
    stats = read_stream(BrightBoardReader(loose=(7, 9)), video, tmp_path / "out", verbose=False)
    events = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert stats["events"] == 1 and len(events) == 1
    assert events[0]["text"] == TEXT and events[0]["readings"] == 24  # one reading a frame


def test_a_board_that_was_read_is_one_sighting_and_unread_boards_carry_no_reading():
    tracker = PlateTracker(max_gap=1, min_readings=1)
    plate = {"type": "l_board", "text": TEXT, "box": [10.0, 10.0, 90.0, 30.0], "score": 0.9}
    tracker.update(0, 0.0, [plate], boards=[[10.0, 10.0, 90.1, 30.0]])  # the plate's own board
    assert len(tracker.active) == 1 and len(tracker.active[0].readings) == 1
    tracker.update(1, 0.04, [], boards=[[14.0, 10.0, 94.0, 30.0], [200.0, 50.0, 260.0, 70.0]])
    assert [len(t.readings) for t in tracker.active] == [1, 0]
    assert tracker.active[0].box.tolist() == [14.0, 10.0, 94.0, 30.0]  # moved on by the unread board
    assert tracker.update(2, 0.08, []) == []  # both seen one update ago: max_gap=1 keeps them
    finished = tracker.update(3, 0.12, [])
    assert [t.id for t in finished] == [1] and not tracker.active  # a track never read is no event
    assert finished[0].event()["last_frame"] == 0  # the frames of its readings


def test_a_roi_outside_the_frames_stops_the_stream_with_one_message(tmp_path):
    video = tmp_path / "road.avi"
    write_video(video, frames=4)
    with pytest.raises(
        StreamError, match=r"road\.avi: roi \[300, 0, 100, 100\] leaves less than 32x32 pixels of a 320x240"
    ):
        read_stream(BrightBoardReader(roi=[300, 0, 100, 100]), video, tmp_path / "out", verbose=False)
    assert (tmp_path / "out" / "events.jsonl").read_text() == ""


@pytest.mark.parametrize("name", ["annotated.mp4", "annotated.avi"])
def test_the_annotated_video_holds_the_frames_read_with_the_track_drawn(tmp_path, name):
    video = tmp_path / "road.avi"
    write_video(video)
    stats = read_stream(BrightBoardReader(), video, tmp_path / "out", every_n_frames=2, video=name, verbose=False)
    assert stats["video"] == str(tmp_path / "out" / name)
    capture = cv2.VideoCapture(stats["video"])
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 12 and frames[0].shape == (240, 320, 3)
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(25 / 2, abs=0.01)
    # the track's label is drawn in yellow under the board (the source has no yellow at all)
    yellow = (frames[5][:, :, 2] > 180) & (frames[5][:, :, 1] > 180) & (frames[5][:, :, 0] < 90)
    ys, xs = np.nonzero(yellow)
    assert len(ys) > 50 and ys.min() >= 125 and 100 <= xs.min() <= 110  # board at x=100
    with pytest.raises(OutputError, match="exists: name another video"):  # never overwritten
        read_stream(BrightBoardReader(), video, tmp_path / "out", video=name, verbose=False)
    with pytest.raises(OutputError, match=r"write \.mp4 or \.avi"):
        read_stream(BrightBoardReader(), video, tmp_path / "out", video="frames.gif", verbose=False)


def test_max_frames_and_a_second_plate_later_give_two_events(tmp_path):
    video = tmp_path / "two.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    for i in range(30):
        frame = np.zeros((240, 320, 3), np.uint8)
        if i < 8 or 16 <= i < 24:  # one plate, a gap of 8 frames, another one far away
            x = 20 + 4 * i if i < 8 else 200
            cv2.rectangle(frame, (x, 40 if i < 8 else 170), (x + 80, 65 if i < 8 else 195), (240, 240, 240), -1)
        writer.write(frame)
    writer.release()
    stats = read_stream(BrightBoardReader(), video, tmp_path / "out", max_frames=26, verbose=False)
    assert stats["frames"] == 26
    events = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert [(e["first_frame"], e["last_frame"]) for e in events] == [(0, 7), (16, 23)]


def test_vote_takes_the_common_length_then_each_position():
    assert vote([("12a3456", 0.9), ("12a3458", 0.5), ("12a3456", 0.8), ("1a3456", 0.4)])[0] == "12a3456"
    assert vote([("123a4567", 0.5), ("12a4567", 0.9), ("123a4567", 0.6)])[0] == "123a4567"
    assert vote([]) == ("", 0.0)
    assert vote([("12a3456", 0.9)] * 3)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="iou_thresh"):
        PlateTracker(iou_thresh=2.0)


def test_predict_reads_a_video_through_the_cli(fast_run, tmp_path):
    video = tmp_path / "road.avi"
    write_video(video, frames=6)
    ckpt = fast_run[0] / "checkpoints" / "last.ckpt"
    args = f"ckpt_path={ckpt}", f"input={video}", f"output={tmp_path / 'out'}", "every_n_frames=3"
    proc = subprocess.run([sys.executable, "-m", "lpr.predict", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "6 frames (2 read)" in proc.stdout and (tmp_path / "out" / "events.jsonl").is_file()
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    for name, message in (("missing.mp4", "does not exist"), ("broken.mp4", "cannot be opened")):
        args = f"ckpt_path={ckpt}", f"input={tmp_path / name}", f"output={tmp_path / 'x'}"
        proc = subprocess.run([sys.executable, "-m", "lpr.predict", *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_ctrl_c_stops_a_stream_and_keeps_what_was_written(fast_run, tmp_path):
    video = tmp_path / "long.avi"
    write_video(video, frames=300)
    ckpt = fast_run[0] / "checkpoints" / "last.ckpt"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lpr.predict", f"ckpt_path={ckpt}", f"input={video}", f"output={out}"]
    proc = subprocess.Popen(
        [*cmd, "video=drawn.avi"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default
    )
    deadline = time.monotonic() + 240
    # the annotated video is opened with the first frame read: a signal after it finds the stream
    # being read however loaded the machine is, and long before its 300 frames
    while not (out / "drawn.avi").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "stopped: the events so far are written" in stdout and "Traceback" not in stderr
    frames = int(stdout.split(" frames")[0].split()[-1])
    assert 0 < frames < 300 and (out / "events.jsonl").is_file()
    written = cv2.VideoCapture(str(out / "drawn.avi"))  # closed playable, with the frames read
    assert written.isOpened() and written.read()[0]
    written.release()


def _panned_plate(root: Path) -> tuple[np.ndarray, list[dict], str, list[int]]:
    """A synthetic image with one plate, its annotations, the plate's text and 9 shifts that keep it in view."""
    src = generate(root, train=6, val=0, heldout=0, seed=3)
    coco = json.loads(src["train"].read_text())
    by_image = {im["id"]: [a for a in coco["annotations"] if a["image_id"] == im["id"]] for im in coco["images"]}

    def board_width(im: dict) -> float:  # of an image with one plate
        widths = [a["bbox"][2] for a in by_image[im["id"]] if "text" in a]
        return widths[0] if len(widths) == 1 else 0.0

    im = max(coco["images"], key=board_width)
    anns = by_image[im["id"]]
    xs = [x for a in anns for poly in a["segmentation"] for x in poly[0::2]]
    shifts = np.linspace(max(2 - min(xs), -60), min(im["width"] - 2 - max(xs), 60), 9).round().astype(int).tolist()
    text = next(a["text"] for a in anns if "text" in a)
    return cv2.imread(str(src["images"] / im["file_name"])), anns, text, shifts


def _shift(image: np.ndarray, dx: float) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, 0]]), (w, h), borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.slow
def test_a_trained_model_reads_a_plate_passing_by_as_one_event(tmp_path):
    """The real model, not a stand-in: the recipe's network trained a few minutes on one synthetic plate
    seen at 9 places reads it passing a camera (24 frames at places in between, noise, one frame blurred
    so that it alone reads no plate) as one event with its text."""
    image, anns, text, shifts = _panned_plate(tmp_path / "src")
    (tmp_path / "set" / "images").mkdir(parents=True)
    images, annotations = [], []
    for i, dx in enumerate(shifts):
        cv2.imwrite(str(tmp_path / "set" / "images" / f"{i}.jpg"), _shift(image, dx))
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": image.shape[1], "height": image.shape[0]})
        for a in anns:
            moved = [[v + dx * (k % 2 == 0) for k, v in enumerate(poly)] for poly in a["segmentation"]]
            bbox = [a["bbox"][0] + dx, *a["bbox"][1:]]
            annotations.append(
                {**a, "id": len(annotations) + 1, "image_id": i + 1, "segmentation": moved, "bbox": bbox}
            )
    categories = json.loads((tmp_path / "src" / "train.json").read_text())["categories"]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (tmp_path / "set" / "train.json").write_text(json.dumps(coco))
    run = tmp_path / "run"
    train = [
        *("+experiment=plate", f"data.root={tmp_path / 'set'}", "data.synthesize=null", "data.heldout_json=null"),
        *("data.val_json=train.json", "trainer.max_steps=400", "trainer.max_epochs=1000", "callbacks.time_budget=null"),
        *("trainer.val_check_interval=400", "model.scheduler.warmup_steps=30", f"paths.output_dir={run}"),
    ]
    proc = subprocess.run([sys.executable, "-m", "lpr.train", *train], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]

    rng = np.random.default_rng(0)
    video = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, image.shape[1::-1])
    for i, dx in enumerate(np.linspace(shifts[0], shifts[-1], 24)):
        frame = np.clip(_shift(image, dx) + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
        if i == 12:
            frame = cv2.blur(frame, (21, 1))
            cv2.imwrite(str(tmp_path / "blurred.png"), frame)
        writer.write(frame)
    writer.release()
    ckpt = run / "checkpoints" / "last.ckpt"
    for name in ("blurred.png", "drive.avi"):
        args = f"ckpt_path={ckpt}", f"input={tmp_path / name}", f"output={tmp_path / name}.read"
        proc = subprocess.run([sys.executable, "-m", "lpr.predict", *args], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    alone = json.loads((tmp_path / "blurred.png.read" / "blurred.json").read_text())["plates"]
    assert text not in [p["text"] for p in alone]
    events = [json.loads(line) for line in (tmp_path / "drive.avi.read" / "events.jsonl").read_text().splitlines()]
    assert [e["text"] for e in events] == [text], events
    assert (events[0]["first_frame"], events[0]["last_frame"]) == (0, 23) and events[0]["readings"] >= 20
