"""oneDNN's primitive cache: trained steps of the plate recipe with its default capacity vs lpr's.

    python scripts/bench_onednn_cache.py --ckpt CKPT [--steps 30] [--repeats 2] [--threads 2] \\
        [--capacity 1024 --capacity 16384]

oneDNN reads ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` once per process, so each
capacity trains in a process of its own; the processes alternate. Each trains
the recipe from ``CKPT``'s weights on the same ``--steps`` batches of the cached
synthetic set three times (the model as ``CKPT``'s own config builds it, the
data, precision and optimizer the recipe's): a first pass builds the primitives, the second is
timed, and during the third oneDNN reports every primitive it builds anew
(``create:cache_miss``) or finds in its cache. The windows and the number of
positive RoIs vary from batch to batch, so each step meets convolutions of new
shapes. Prints each process's seconds per step and primitives built anew per
step, then the median speed of each capacity relative to the first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from lpr.hardware import ONEDNN_CACHE_CAPACITY, ONEDNN_CACHE_ENV

MARK = "third pass:"


def child(args: argparse.Namespace) -> None:
    import torch
    from hydra.utils import instantiate
    from plate_setup import plate_config_and_data, train_autocast

    from lpr.checkpoint import load

    torch.set_num_threads(args.threads)
    cfg, datamodule = plate_config_and_data([])
    torch.manual_seed(0)  # the same windows in every process
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(args.steps)]
    model = load(args.ckpt).model.train()
    optimizer = instantiate(cfg.model.optimizer, params=model.parameters(), _convert_="all")

    def train_pass() -> float:
        start = time.perf_counter()
        for images, targets in batches:
            with train_autocast(cfg):
                losses = model(images, targets)
            optimizer.zero_grad()
            sum(v.float() for v in losses.values()).backward()
            optimizer.step()
        return (time.perf_counter() - start) / len(batches)

    train_pass()
    seconds = train_pass()
    print(f"seconds per step {seconds:.4f}", flush=True)
    print(MARK, flush=True)
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON_CREATION):
        train_pass()


def run_child(capacity: int, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds per step, primitives built anew per step) of one process with ``capacity``."""
    env = {**os.environ, ONEDNN_CACHE_ENV: str(capacity)}
    cmd = [sys.executable, __file__, "--child", "--ckpt", args.ckpt, "--steps", str(args.steps)]
    cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    head, _, third = out.partition(MARK)
    seconds = float(next(line.split()[-1] for line in head.splitlines() if line.startswith("seconds per step")))
    built = sum(",create:cache_miss," in line for line in third.splitlines())
    return seconds, built / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="trained weights (a trained RPN sends more RoIs on)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--capacity", type=int, action="append", help=f"default: 1024 and {ONEDNN_CACHE_CAPACITY}")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    capacities = args.capacity or [1024, ONEDNN_CACHE_CAPACITY]
    print(
        f"+experiment=plate from {args.ckpt}: {args.steps} batches, timed on the second pass, "
        f"{args.repeats} repeats, {args.threads} threads, capacities {capacities}"
    )
    seconds: dict[int, list[float]] = {c: [] for c in capacities}
    for repeat in range(args.repeats):
        for capacity in capacities:
            s, built = run_child(capacity, args)
            seconds[capacity].append(s)
            print(f"  repeat {repeat + 1} capacity {capacity:>6}: {s:.3f} s/step, {built:5.1f} primitives built a step")
    base = statistics.median(seconds[capacities[0]])
    print(f"\n{'capacity':>8} {'s/step':>8} {'speed':>7}")
    for capacity, ts in seconds.items():
        print(f"{capacity:>8} {statistics.median(ts):8.3f} {base / statistics.median(ts):6.2f}x")


if __name__ == "__main__":
    main()
