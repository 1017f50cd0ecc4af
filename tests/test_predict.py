"""``lpr.predict`` and ``PlateReader`` on a debug=fast checkpoint: folders, a real photo, bad inputs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import SHARED_TESTDATA

from lpr import PlateReader
from lpr.draw import draw_result

REAL = SHARED_TESTDATA / "real_images" / "car_plate_5AU5341.png"


@pytest.fixture(scope="module")
def checkpoint(fast_run):
    return fast_run[0] / "checkpoints" / "last.ckpt"


def _check_result(result: dict, width: int, height: int) -> None:
    assert set(result) == {"image", "width", "height", "detections", "plates"}
    assert (result["width"], result["height"]) == (width, height)
    for det in result["detections"]:
        assert set(det) == {"label", "score", "box", "polygon"}
        x1, y1, x2, y2 = det["box"]
        assert -1 <= x1 <= x2 <= width + 1 and -1 <= y1 <= y2 <= height + 1
        assert all(len(p) == 2 for p in det["polygon"])
    for plate in result["plates"]:
        assert set(plate) == {"type", "text", "sub", "main", "box", "score"}


def _run_predict(tmp_path, checkpoint, source, *extra):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "lpr.predict", f"ckpt_path={checkpoint}", f"input={source}", f"output={out}",
         f"hydra.run.dir={tmp_path / 'run'}", *extra],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc, out


def test_predict_folder_with_a_corrupt_file(tmp_path, checkpoint, synth_dir):
    src = tmp_path / "in"
    shutil.copytree(synth_dir / "images" / "val", src)
    (src / "zero.jpg").write_bytes(b"")
    (src / "notes.png").write_text("not an image")
    proc, out = _run_predict(tmp_path, checkpoint, src, "score_thr=0.01", "batch_size=2")
    assert proc.returncode == 1, proc.stderr[-2000:]  # some inputs failed
    good = sorted(p.name for p in (synth_dir / "images" / "val").iterdir())
    for name in good:
        stem = name.rsplit(".", 1)[0]
        result = json.loads((out / f"{stem}.json").read_text())
        _check_result(result, 384, 288)
        assert cv2.imread(str(out / f"{stem}.jpg")).shape == (288, 384, 3)
        assert f"{name}: " in proc.stdout
    assert any(json.loads((out / f"{n.rsplit('.', 1)[0]}.json").read_text())["detections"] for n in good)
    assert "zero.jpg: FAILED" in proc.stdout and "notes.png: FAILED" in proc.stdout
    assert f"{len(good)} images," in proc.stdout and "2 failed" in proc.stdout and "images/s" in proc.stdout


def test_inputs_sharing_a_stem_keep_every_result(tmp_path, checkpoint, synth_dir):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    image = cv2.imread(str(synth_dir / "images" / "val" / "000000.jpg"))
    other = cv2.imread(str(synth_dir / "images" / "val" / "000001.jpg"))
    cv2.imwrite(str(src / "car.jpg"), image)
    cv2.imwrite(str(src / "car.png"), other)
    cv2.imwrite(str(src / "sub" / "car.jpg"), other)
    proc, out = _run_predict(tmp_path, checkpoint, src, "score_thr=0.01")
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert written == ["car.jpg.json", "car.png.json", "sub/car.json"]
    images = {json.loads((out / name).read_text())["image"] for name in written}
    assert images == {"car.jpg", "car.png", "sub/car.jpg"}
    assert (out / "car.png.jpg").is_file() and (out / "sub" / "car.jpg").is_file()
    assert "3 images," in proc.stdout


@pytest.mark.skipif(not REAL.is_file(), reason=f"outside test data not found at {REAL}")
def test_predict_a_real_photo(tmp_path, checkpoint):
    proc, out = _run_predict(tmp_path, checkpoint, REAL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _check_result(json.loads((out / "car_plate_5AU5341.json").read_text()), 518, 331)
    assert (out / "car_plate_5AU5341.jpg").is_file()
    assert "car_plate_5AU5341.png: " in proc.stdout


def test_plate_reader_api_on_arrays(checkpoint, synth_dir):
    reader = PlateReader.from_checkpoint(checkpoint, score_thr=0.01)
    bgr = cv2.imread(str(synth_dir / "images" / "val" / "000000.jpg"))
    from_path = reader(synth_dir / "images" / "val" / "000000.jpg")
    from_bgr = reader(bgr)
    from_rgb = reader(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), color="rgb")
    assert from_path["detections"] == from_bgr["detections"] == from_rgb["detections"]
    _check_result(from_bgr, 384, 288)
    _check_result(reader(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)), 384, 288)  # grayscale
    _check_result(reader(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)), 384, 288)  # with alpha
    drawn = draw_result(bgr, from_bgr)
    assert drawn.shape == bgr.shape and not np.array_equal(drawn, bgr)


def test_huge_image_is_downscaled_and_results_are_in_original_pixels(checkpoint, synth_dir):
    reader = PlateReader.from_checkpoint(checkpoint, score_thr=0.01, max_side=384)
    bgr = cv2.imread(str(synth_dir / "images" / "val" / "000000.jpg"))
    huge = cv2.resize(bgr, (384 * 8, 288 * 8), interpolation=cv2.INTER_NEAREST)
    small, big = reader(bgr), reader(huge)
    _check_result(big, 384 * 8, 288 * 8)
    assert len(big["detections"]) == len(small["detections"]) > 0
    assert big["detections"][0]["box"] == pytest.approx([8 * v for v in small["detections"][0]["box"]], abs=8)


def test_a_region_of_interest_reads_as_the_image_alone_in_the_frames_pixels(checkpoint, synth_dir):
    bgr = cv2.imread(str(synth_dir / "images" / "val" / "000000.jpg"))
    wide = np.zeros((288 + 100, 384 * 3, 3), np.uint8)  # a frame 3x wider than the image, the image at (400, 60)
    wide[60 : 60 + 288, 400 : 400 + 384] = bgr
    alone = PlateReader.from_checkpoint(checkpoint, score_thr=0.01)(bgr)
    framed = PlateReader.from_checkpoint(checkpoint, score_thr=0.01, roi=[400, 60, 384, 288])(wide)
    _check_result({k: v for k, v in framed.items() if k != "roi"}, 384 * 3, 388)
    assert framed["roi"] == [400, 60, 384, 288]
    assert len(framed["detections"]) == len(alone["detections"]) > 0
    for a, f in zip(alone["detections"], framed["detections"], strict=True):
        assert (f["label"], f["score"]) == (a["label"], a["score"])
        assert f["box"] == pytest.approx([a["box"][0] + 400, a["box"][1] + 60, a["box"][2] + 400, a["box"][3] + 60])
        assert f["polygon"] == [[x + 400, y + 60] for x, y in a["polygon"]]
    # a roi reaching past the frame is clipped to it; one that leaves too little of it fails that image
    clipped = PlateReader.from_checkpoint(checkpoint, score_thr=0.01, roi=[400, 60, 5000, 5000])(wide)
    assert clipped["roi"] == [400, 60, 384 * 3 - 400, 388 - 60]
    with pytest.raises(ValueError, match="leaves less than 32x32"):
        PlateReader.from_checkpoint(checkpoint, roi=[1150, 0, 100, 100])(wide)
    # the region read is outlined, and nothing else changes in the drawing
    outlined = (draw_result(wide, framed) != draw_result(wide, {**framed, "roi": None})).any(2)
    ys, xs = np.nonzero(outlined)
    assert len(ys) > 0 and np.isin(ys, [60, 60 + 287]).any() and np.isin(xs, [400, 400 + 383]).any()
    assert (np.isin(ys, [60, 60 + 287]) | np.isin(xs, [400, 400 + 383])).all()


def test_predict_cli_roi_outside_one_image_fails_that_image_only(tmp_path, checkpoint, synth_dir):
    src = tmp_path / "in"
    src.mkdir()
    bgr = cv2.imread(str(synth_dir / "images" / "val" / "000000.jpg"))
    cv2.imwrite(str(src / "wide.png"), cv2.copyMakeBorder(bgr, 0, 0, 600, 0, cv2.BORDER_CONSTANT))
    cv2.imwrite(str(src / "small.png"), bgr)
    proc, out = _run_predict(tmp_path, checkpoint, src, "roi=[600,0,384,288]", "score_thr=0.01")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "small.png: FAILED (roi [600, 0, 384, 288] leaves less than 32x32 pixels of a 384x288 image)" in proc.stdout
    assert json.loads((out / "wide.json").read_text())["roi"] == [600, 0, 384, 288]
    assert not (out / "small.json").exists()


BAD_OPTIONS = {  # every bad option of one command line is named in its one message
    "roi=[1,2,3]": r"roi=\[1, 2, 3\]: must be \[x, y, width, height\]",
    "zoom=maybe": r"zoom='maybe': must be true or false, or null",
    "batch_size=0": r"batch_size=0: must be an integer >= 1",
    "score_thr=2": r"score_thr=2: must be a number in \[0, 1\]",
    "every_n_frames=0": r"every_n_frames=0: must be an integer >= 1",
    "max_side=10": r"max_side=10: must be an integer >= 32",
    "track.max_gap=-1": r"track\.max_gap=-1: must be an integer >= 0",
}


@pytest.mark.parametrize("options", [list(BAD_OPTIONS), ["roi=[0,0,10,100]"]], ids=["all", "roi-size"])
def test_predict_cli_bad_options_exit_2_naming_each(tmp_path, checkpoint, synth_dir, options):
    proc, out = _run_predict(tmp_path, checkpoint, synth_dir / "images" / "val", *options)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()
    for option in options:
        message = BAD_OPTIONS.get(option, r"roi=\[0, 0, 10, 100\]: must be")
        assert re.search(message, proc.stderr), (option, proc.stderr[-2000:])
