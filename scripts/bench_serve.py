"""The reading service's requests/s and latency vs ``lpr.predict`` on the same images, side by side.

    python scripts/bench_serve.py --ckpt CKPT [--images 20] [--requests 60] [--concurrency 1 8] [--batch-size 1 8]

Starts ``python -m lpr.serve`` on a free loopback port, posts synthetic 384x288 plate images
(raw JPEG bodies, one request per image) ``--requests`` times at each concurrency, for each of the
service's ``batch_size`` settings (concurrent requests read in one forward pass), and prints
requests/s with the p50 and p95 latency; then runs ``lpr.predict`` (batch 1, no drawing) on the
same images in this process and prints its images/s.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from lpr.data.synth import generate
from lpr.hardware import enlarge_onednn_cache
from lpr.predict import predict
from lpr.reader import PlateReader


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(args: argparse.Namespace, bodies: list[bytes], batch_size: int) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lpr.serve", f"ckpt_path={args.ckpt}", f"port={port}", f"batch_size={batch_size}"]
    server = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        for body in bodies[:3]:  # warm-up
            httpx.post(f"{url}/read", content=body, timeout=120)

        def one(i: int) -> float:
            start = time.perf_counter()
            response = httpx.post(f"{url}/read", content=bodies[i % len(bodies)], timeout=300)
            response.raise_for_status()
            return time.perf_counter() - start

        for concurrency in args.concurrency:
            start = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                latencies = sorted(pool.map(one, range(args.requests)))
            seconds = time.perf_counter() - start
            p50 = statistics.median(latencies) * 1000
            p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1000
            print(
                f"lpr.serve batch_size={batch_size}, {concurrency:2d} concurrent: {args.requests / seconds:6.2f} "
                f"requests/s, latency p50 {p50:.0f} ms, p95 {p95:.0f} ms"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = generate(Path(tmp) / "set", train=0, val=args.images, seed=5)["images"] / "val"
        bodies = [p.read_bytes() for p in sorted(folder.iterdir())]
        for batch_size in args.batch_size:
            serve(args, bodies, batch_size)
        enlarge_onednn_cache()
        reader = PlateReader.from_checkpoint(args.ckpt)
        predict(reader, folder, Path(tmp) / "warm", batch_size=1, draw=False, verbose=False)
        stats = predict(reader, folder, Path(tmp) / "out", batch_size=1, draw=False, verbose=False)
        print(f"lpr.predict (batch 1, no drawing): {stats['images_per_s']:6.2f} images/s, the same images")
    print(f"config: {len(bodies)} synthetic 384x288 JPEGs, {args.requests} requests a setting, {args.ckpt}")


if __name__ == "__main__":
    main()
