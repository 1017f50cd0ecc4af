"""A plate-reading service: ``python -m lpr.serve ckpt_path=CKPT [host=127.0.0.1] [port=8000]``.

FastAPI on uvicorn (``pip install -e ".[serve]"``): the common Python stack for a
JSON API, with request parsing, limits and a test client, and nothing to run
besides this process. Endpoints:

- ``POST /read``: an image as the raw request body or as the multipart field
  ``file``; answers predict's JSON; ``?draw=1`` adds ``drawn``, the result drawn
  on the image as a base64 JPEG;
- ``GET /health``, ``GET /info`` (classes, plate grammar, model file, versions);
- ``GET /``: a page where a person drops or picks a photo and sees the result.

With ``batch_size`` > 1, concurrent requests are read together: a request waits
up to ``batch_wait_ms`` for others, and up to ``batch_size`` images go through
the model in one forward pass (on 2 CPU cores that measured slower than one by
one, so the default is 1); the model runs off the event loop. Uploads over ``max_upload_mb`` or
``max_pixels`` get 413, files that are no image or a truncated one 400, and a
request not answered within ``timeout_s`` 504. ``roi`` and ``max_side`` are
predict's: a camera's lane read alone, in the frame's pixels (an image that
leaves less than 32x32 pixels of the region gets 400). The service writes no file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.resources
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig

import lpr
from lpr.checkpoint import CheckpointError
from lpr.config_check import SERVE_RULES, ConfigError, clear_errors, model_alias, validate_options
from lpr.data.validate import decode_image_bgr
from lpr.draw import draw_result
from lpr.hardware import enlarge_onednn_cache
from lpr.onnx_reader import OnnxModelError
from lpr.results import ReaderBase
from lpr.zoom import settings

try:  # the [serve] extra; at module level, as FastAPI resolves the endpoints' annotations here
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse
except ImportError:
    FastAPI = None

log = logging.getLogger("lpr.serve")


class ServeError(ValueError):
    """The service cannot start (a missing package, a bad setting)."""


@dataclass
class Limits:
    """What one request may ask of the service."""

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    timeout_s: float = 30.0
    batch_size: int = 1
    batch_wait_ms: float = 5.0


@dataclass
class _Job:
    bgr: np.ndarray
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """Collects the images of concurrent requests and reads them in one call of ``reader.read``."""

    def __init__(self, reader: ReaderBase, limits: Limits) -> None:
        self.reader, self.limits = reader, limits
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.batches = 0  # forward passes run, for /info and the tests

    async def read(self, bgr: np.ndarray) -> dict:
        job = _Job(bgr)
        await self.queue.put(job)
        return await job.done

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.limits.batch_wait_ms / 1000
            while len(jobs) < self.limits.batch_size:
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            jobs = [j for j in jobs if not j.done.cancelled()]
            if not jobs:
                continue
            try:
                results = await asyncio.to_thread(self.reader.read, [j.bgr for j in jobs], color="bgr")
                self.batches += 1
                for job, result in zip(jobs, results, strict=True):
                    if not job.done.done():
                        job.done.set_result(result)
            except Exception as e:  # one failing batch answers its requests with the error, and goes on
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(e)


def _page() -> str:
    return importlib.resources.files("lpr").joinpath("serve_page.html").read_text(encoding="utf-8")


def create_app(reader: ReaderBase, limits: Limits | None = None, *, model: str = "") -> object:
    """The FastAPI application reading plates with ``reader``."""
    if FastAPI is None:
        raise ServeError('the service needs its extra: pip install -e ".[serve]"')
    limits = limits or Limits()
    batcher = Batcher(reader, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="lpr", version=lpr.__version__, lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(HTTPException)
    async def one_message(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    async def upload(request: Request) -> tuple[bytes, str]:
        """The image bytes of a raw or multipart request, refused past the size limit while reading."""
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_upload_bytes + 4096:
            raise HTTPException(413, f"upload of {int(size)} bytes is over the limit of {limits.max_upload_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_upload_bytes + 4096:
                raise HTTPException(413, f"upload is over the limit of {limits.max_upload_bytes} bytes")
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            from starlette.datastructures import UploadFile
            from starlette.formparsers import MultiPartParser

            async def replay():
                yield bytes(body)

            form = await MultiPartParser(request.headers, replay()).parse()
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise HTTPException(400, "a multipart upload needs the image in the field 'file'")
            data, name = await file.read(), file.filename or "upload"
        else:
            data, name = bytes(body), "upload"
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"image of {len(data)} bytes is over the limit of {limits.max_upload_bytes}")
        return data, name

    @app.post("/read")
    async def read(request: Request, draw: int = 0) -> JSONResponse:
        start = time.perf_counter()
        data, name = await upload(request)
        try:
            bgr = decode_image_bgr(data, name)
        except OSError as e:
            raise HTTPException(400, str(e)) from None
        if bgr.shape[0] * bgr.shape[1] > limits.max_pixels:
            pixels = bgr.shape[0] * bgr.shape[1]
            raise HTTPException(413, f"{name} has {pixels} pixels, over the limit of {limits.max_pixels}")
        try:
            reader.region(bgr.shape[1], bgr.shape[0])
        except ValueError as e:
            raise HTTPException(400, f"{name}: {e}") from None
        try:
            result = await asyncio.wait_for(batcher.read(bgr), limits.timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"not read within {limits.timeout_s} s") from None
        result["image"] = name
        if draw:
            ok, jpeg = cv2.imencode(".jpg", draw_result(bgr, result), (cv2.IMWRITE_JPEG_QUALITY, 90))
            result["drawn"] = base64.b64encode(jpeg.tobytes()).decode("ascii") if ok else None
        result["seconds"] = round(time.perf_counter() - start, 4)
        return JSONResponse(result)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "batches": batcher.batches}

    @app.get("/info")
    async def info() -> dict:
        return {
            "classes": reader.classes,
            "score_thr": reader.score_thr,
            "reading": reader.reading,
            "roi": None if reader.roi is None else list(reader.roi),
            "max_side": reader.max_side,
            "zoom": settings(reader.zoom),
            "model": model,
            "lpr_version": lpr.__version__,
            "limits": limits.__dict__,
        }

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return _page()

    return app


def reader_for(path: str, **options) -> ReaderBase:
    """A checkpoint's reader, or an ONNX export's (by its ``.onnx`` suffix); ``options`` are the
    readers' keyword arguments (``device``, ``score_thr``, ``max_side``, ``roi``, ``zoom``). An export is
    served without importing torch."""
    if Path(path).suffix.lower() == ".onnx":
        from lpr.onnx_reader import OnnxPlateReader

        return OnnxPlateReader(path, **options)
    from lpr.reader import PlateReader

    return PlateReader.from_checkpoint(path, **options)


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
@clear_errors(CheckpointError, ConfigError, OnnxModelError, ServeError)
def main(cfg: DictConfig) -> None:
    validate_options(cfg, SERVE_RULES)
    try:
        import uvicorn
    except ImportError:
        raise ServeError('the service needs its extra: pip install -e ".[serve]"') from None
    enlarge_onednn_cache()
    roi = cfg.get("roi")
    reader = reader_for(
        cfg.ckpt_path,
        device=cfg.device,
        score_thr=cfg.get("score_thr"),
        max_side=int(cfg.max_side),
        roi=None if roi is None else list(roi),
        zoom=cfg.get("zoom"),
    )
    limits = Limits(
        max_upload_bytes=int(cfg.max_upload_mb * 2**20),
        max_pixels=int(cfg.max_pixels),
        timeout_s=float(cfg.timeout_s),
        batch_size=int(cfg.batch_size),
        batch_wait_ms=float(cfg.batch_wait_ms),
    )
    app = create_app(reader, limits, model=str(cfg.ckpt_path))
    print(f"lpr.serve: http://{cfg.host}:{cfg.port}/ ({cfg.ckpt_path})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=int(cfg.port), log_level="warning")


def cli() -> None:
    """The command line: ``model=`` is another name for ``ckpt_path=``."""
    sys.argv = model_alias(sys.argv)
    main()


if __name__ == "__main__":
    cli()
