"""Training-step speed of the plate recipe's model under CPU execution options, side by side.

    python scripts/bench_step_options.py [--steps 12] [--warmup 3] [--repeats 3] [--threads 2] [overrides ...]

Variants (one bare torchvision loop each: forward, backward, AdamW step, on the
same batches of the cached synthetic set): ``fp32`` (the default), ``bf16``
(forward under ``torch.autocast("cpu", torch.bfloat16)``), ``channels_last``
(model and images in NHWC) and both together. Variants alternate within each
repeat, each from the same initial weights; prints the median seconds per step
and the speed-up over fp32. Extra arguments are Hydra overrides of
``+experiment=plate`` (e.g. ``model.net.box_batch_size_per_image=64``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch
from hydra.utils import instantiate
from plate_setup import plate_config_and_data

VARIANTS = {
    "fp32": (False, False),
    "bf16": (True, False),
    "channels_last": (False, True),
    "bf16+channels_last": (True, True),
}


def seconds_per_step(model, batches, *, bf16: bool, channels_last: bool, warmup: int, cfg) -> float:
    model = copy.deepcopy(model).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.model.optimizer, params=model.parameters(), _convert_="all")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = None
    for step, (images, targets) in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        if channels_last:
            images = [im.contiguous(memory_format=torch.channels_last) if im.dim() == 4 else im for im in images]
        with autocast:
            losses = model(images, targets)
        loss = sum(v.float() for v in losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / (len(batches) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, datamodule = plate_config_and_data(args.overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.model, classes=datamodule.classes, _recursive_=False).model
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(args.steps)]
    print(
        f"config: +experiment=plate {' '.join(args.overrides)} | batch {datamodule.batch_size}, "
        f"{args.steps} steps ({args.warmup} warm-up) x {args.repeats} repeats, {args.threads} threads, "
        f"torch {torch.__version__}"
    )
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name, (bf16, channels_last) in VARIANTS.items():
            t = seconds_per_step(model, batches, bf16=bf16, channels_last=channels_last, warmup=args.warmup, cfg=cfg)
            times[name].append(t)
            print(f"  repeat {repeat + 1} {name:<20} {t:.3f} s/step", flush=True)
    base = statistics.median(times["fp32"])
    print(f"\n{'variant':<20} {'s/step':>8} {'speed-up':>9}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<20} {med:8.3f} {base / med:8.2f}x")


if __name__ == "__main__":
    main()
