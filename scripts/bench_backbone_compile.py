"""Does ``torch.compile`` pay in the 30-minute budget? The recipe's body + FPN, eager against compiled.

    python scripts/bench_backbone_compile.py [--steps 5] [--repeats 5] [--threads 2] [--mode default]

Builds the ``+experiment=plate`` backbone (MobileNetV3 body + FPN, channels-last
weights) twice from the same seed, compiles one (inductor), and times forward +
backward on the training crop's fixed input (batch 2 x 3 x 288 x 384, the
recipe's autocast), alternating eager and compiled, ``--steps`` steps per
repeat after two warm-up steps each. Prints the time compiling took (with the
compiled side's two warm-up steps) and the median ms per step of each side.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra.utils import instantiate
from plate_setup import plate_config, train_autocast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", default="default", help="torch.compile mode (default, max-autotune, ...)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = plate_config([])  # the config alone: the benchmark feeds random images, no data set
    height, width = cfg.model.net.train_crop
    images = torch.rand(cfg.data.batch_size, 3, height, width).contiguous(memory_format=torch.channels_last)

    def backbone() -> torch.nn.Module:
        torch.manual_seed(0)
        return instantiate(cfg.model.net.backbone).to(memory_format=torch.channels_last).train()

    def step(net: torch.nn.Module) -> None:
        with train_autocast(cfg):
            features = net(images)
        sum(f.float().square().mean() for f in features.values()).backward()

    eager = backbone()
    start = time.perf_counter()
    compiled = torch.compile(backbone(), mode=None if args.mode == "default" else args.mode)
    for _ in range(2):
        step(compiled)
    compile_seconds = time.perf_counter() - start
    for _ in range(2):
        step(eager)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        for name, net in (("eager", eager), ("compiled", compiled)):
            start = time.perf_counter()
            for _ in range(args.steps):
                step(net)
            times[name].append((time.perf_counter() - start) / args.steps)
    print(f"config: +experiment=plate backbone, input {tuple(images.shape)} channels-last, "
          f"precision {cfg.trainer.precision}, threads {args.threads}, "
          f"{args.repeats} repeats of {args.steps} steps")  # fmt: skip
    print(f"compiling (+ 2 warm-up steps): {compile_seconds:.1f} s")
    for name, values in times.items():
        print(f"{name:>9}: {statistics.median(values) * 1000:.1f} ms/step (repeats "
              + ", ".join(f"{v * 1000:.0f}" for v in values) + ")")  # fmt: skip
    print(f"speed-up: {statistics.median(times['eager']) / statistics.median(times['compiled']):.2f}x")


if __name__ == "__main__":
    main()
