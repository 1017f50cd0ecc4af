"""The reading service, as a client uses it: a real server on the loopback address."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason='the service tests need the extra: pip install -e ".[serve]" httpx')
pytest.importorskip("fastapi", reason='the service needs its extra: pip install -e ".[serve]"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(ckpt: Path, *args: str):
    """A real ``python -m lpr.serve`` of ``ckpt`` on a free loopback port: yields its URL once /health answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lpr.serve", f"ckpt_path={ckpt}", f"port={port}", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(fast_run):
    args = "max_upload_mb=1", "max_pixels=1000000", "batch_size=8"
    args += ("roi=[0,0,384,288]",)  # the whole of the set's images: what a wider frame shows beyond it is not read
    args += ("timeout_s=120",)  # the last of 24 requests sent at once waits for 3 batches: over 10 s on 2 cores in fp32
    with serving(fast_run[0] / "checkpoints" / "last.ckpt", *args) as url:
        yield url


def test_a_photo_is_read_raw_or_multipart_and_drawn(server, synth_dir):
    image = next((synth_dir / "images" / "val").glob("*.jpg"))
    raw = httpx.post(f"{server}/read", content=image.read_bytes(), headers={"content-type": "image/jpeg"}, timeout=60)
    assert raw.status_code == 200, raw.text
    result = raw.json()
    assert {"image", "width", "height", "detections", "plates"} <= set(result) and (
        result["width"],
        result["height"],
    ) == (384, 288)
    files = {"file": (image.name, image.read_bytes(), "image/jpeg")}
    drawn = httpx.post(f"{server}/read?draw=1", files=files, timeout=60)
    assert drawn.status_code == 200 and drawn.json()["image"] == image.name
    jpeg = cv2.imdecode(np.frombuffer(base64.b64decode(drawn.json()["drawn"]), np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (288, 384, 3)
    assert [d["box"] for d in drawn.json()["detections"]] == [d["box"] for d in result["detections"]]
    assert result["roi"] == [0, 0, 384, 288]


def test_a_wider_frame_is_read_in_the_roi_alone(server, synth_dir):
    """A camera's frame with the photo in its top-left corner and another plate's photo beside it: the
    service reads what the photo alone reads (lossless PNG: the same pixels), and nothing beyond it."""
    images = sorted((synth_dir / "images" / "val").glob("*.jpg"))
    photo, other = cv2.imread(str(images[0])), cv2.imread(str(images[1]))
    frame = np.zeros((600, 800, 3), np.uint8)
    frame[:288, :384], frame[300:588, 400:784] = photo, other
    png = cv2.imencode(".png", photo)[1].tobytes()
    alone = httpx.post(f"{server}/read", content=png, timeout=60).json()
    wide = httpx.post(f"{server}/read", content=cv2.imencode(".png", frame)[1].tobytes(), timeout=60).json()
    assert alone["detections"] and (wide["width"], wide["height"], wide["roi"]) == (800, 600, [0, 0, 384, 288])
    assert wide["detections"] == alone["detections"] and wide["plates"] == alone["plates"]
    tiny = httpx.post(f"{server}/read", content=cv2.imencode(".png", frame[:20, :20])[1].tobytes(), timeout=60)
    assert tiny.status_code == 400 and "leaves less than 32x32 pixels of a 20x20 image" in tiny.json()["error"]


def test_bad_uploads_get_one_clear_4xx_each(server, synth_dir):
    good = next((synth_dir / "images" / "val").glob("*.jpg")).read_bytes()
    big = cv2.imencode(".png", np.zeros((1100, 1000, 3), np.uint8))[1].tobytes()  # 1.1 MP, a small file
    cases = {
        b"this is no image": (400, "cannot be decoded"),
        good[: len(good) // 2]: (400, "truncated JPEG"),
        b"": (400, "empty"),
        np.random.default_rng(0).bytes(2 * 2**20): (413, "over the limit"),
        big: (413, "pixels, over the limit"),
    }
    for body, (status, message) in cases.items():
        response = httpx.post(f"{server}/read", content=body, timeout=60)
        assert response.status_code == status and message in response.json()["error"], response.text
    assert httpx.post(f"{server}/read", files={"other": ("a.jpg", good)}, timeout=60).status_code == 400


def test_two_dozen_concurrent_requests_are_all_answered_in_batches(server, synth_dir):
    images = [p.read_bytes() for p in sorted((synth_dir / "images" / "val").glob("*.jpg"))]
    before = httpx.get(f"{server}/health").json()["batches"]

    def one(i: int) -> int:
        return httpx.post(f"{server}/read", content=images[i % len(images)], timeout=300).status_code

    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(one, range(24)))
    assert codes == [200] * 24
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["batches"] - before < 24  # some requests shared a forward pass


def test_a_request_not_read_in_time_gets_504_and_the_service_goes_on(fast_run, synth_dir):
    image = next((synth_dir / "images" / "val").glob("*.jpg")).read_bytes()
    with serving(fast_run[0] / "checkpoints" / "last.ckpt", "timeout_s=0.001") as url:  # no forward pass is this fast
        for _ in range(2):  # the second request finds the service as the first left it
            response = httpx.post(f"{url}/read", content=image, timeout=60)
            assert response.status_code == 504 and response.json() == {"error": "not read within 0.001 s"}
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"


def test_the_page_and_info(server, fast_run):
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and 'type="file"' in page.text and "read?draw=1" in page.text
    info = httpx.get(f"{server}/info").json()
    from lpr.checkpoint import load

    assert info["classes"] == load(fast_run[0] / "checkpoints" / "last.ckpt").classes
    assert info["reading"]["sub_pattern"] and info["limits"]["max_pixels"] == 1000000
    assert (info["roi"], info["max_side"]) == ([0, 0, 384, 288], 2048)
    assert info["zoom"]["max_width"] == 180  # the recipe's second look at small boards


def test_bad_options_stop_the_service_with_one_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lpr.serve", f"ckpt_path={tmp_path / 'none.ckpt'}", "roi=[1,2]", "port=-1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "roi=[1, 2]: must be [x, y, width, height]" in proc.stderr and "port=-1: must be" in proc.stderr


def test_the_page_reads_a_photo_in_a_real_browser(server, synth_dir, tmp_path):
    """Chromium, headless (Debian's chromium and chromium-driver, and selenium): pick a photo on the page,
    and the drawn result and the plate text appear. The screenshot is kept in $LPR_TEST_ARTIFACTS (or
    the test's temporary folder)."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="the browser test needs selenium (pip install selenium)"
    )
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("no browser: apt-get install chromium chromium-driver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(f"{server}/")
        image = next((synth_dir / "images" / "val").glob("*.jpg"))
        driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(driver, 120).until(
            lambda d: (d.find_element(By.ID, "drawn").get_attribute("src") or "").startswith("data:image/jpeg;base64,")
        )
        status = driver.find_element(By.ID, "status").text
        assert image.name in status and "detections" in status, status
        assert driver.find_element(By.ID, "plates").text  # a plate's text, or "no plate read"
        assert driver.execute_script("return document.getElementById('drawn').naturalWidth") == 384
        assert not driver.find_element(By.ID, "error").text
        shot = Path(os.environ.get("LPR_TEST_ARTIFACTS", tmp_path)) / "serve_page.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    finally:
        driver.quit()


def test_bench_serve_prints_requests_per_second(fast_run):
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_serve.py"
    ckpt = fast_run[0] / "checkpoints" / "last.ckpt"
    args = "--ckpt", str(ckpt), "--images", "2", "--requests", "2", "--concurrency", "1", "--batch-size", "1"
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "requests/s, latency p50" in proc.stdout and "images/s, the same images" in proc.stdout
