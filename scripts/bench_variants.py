"""Training-step speed of model variants of the plate recipe, side by side on the same batches.

    python scripts/bench_variants.py [--steps 12] [--warmup 3] [--repeats 3] [--threads 2] \\
        --variant "recipe=" --variant "p2=model.net.min_size=288 model.net.max_size=384 ..." [--ckpt CKPT]

Each ``--variant NAME=OVERRIDES`` is the ``+experiment=plate`` config with those
Hydra overrides (space-separated) of ``model.*``; all variants train (forward
under the recipe's precision, backward, optimizer step) on the same batches of
the cached synthetic set, from a fresh model each repeat, and alternate within
each repeat. Prints the median seconds per step and each variant's speed
relative to the first. ``--ckpt`` starts every variant from a trained
checkpoint's weights wherever names and shapes match: a trained RPN sends many
more positive RoIs to the mask head than a fresh one, and steps get slower.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra.utils import instantiate
from plate_setup import plate_config_and_data, train_autocast


def seconds_per_step(cfg, classes, batches, warmup: int, state: dict | None) -> float:
    torch.manual_seed(0)
    model = instantiate(cfg.model, classes=classes, _recursive_=False).model.train()
    if state:
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
    optimizer = instantiate(cfg.model.optimizer, params=model.parameters(), _convert_="all")
    start = time.perf_counter()
    for step, (images, targets) in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        with train_autocast(cfg):
            losses = model(images, targets)
        optimizer.zero_grad()
        sum(v.float() for v in losses.values()).backward()
        optimizer.step()
    return (time.perf_counter() - start) / (len(batches) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, help="NAME=space-separated overrides")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ckpt", default=None, help="start from these weights where names and shapes match")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = dict(v.split("=", 1) for v in args.variant)
    configs = {name: plate_config_and_data(overrides.split())[0] for name, overrides in variants.items()}
    _, datamodule = plate_config_and_data([])
    state = None
    if args.ckpt:
        prefix = "model."  # the LightningModule's attribute holding the torchvision model
        ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=True)["state_dict"]
        state = {k[len(prefix) :]: v for k, v in ckpt.items() if k.startswith(prefix)}
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(args.steps)]
    print(
        f"+experiment=plate, batch {datamodule.batch_size}, {args.steps} steps ({args.warmup} warm-up) "
        f"x {args.repeats} repeats, {args.threads} threads, torch {torch.__version__}, "
        f"{'weights from ' + args.ckpt if args.ckpt else 'fresh models'}"
    )
    for name, overrides in variants.items():
        print(f"  {name}: {overrides or '(the recipe)'}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, cfg in configs.items():
            t = seconds_per_step(cfg, datamodule.classes, batches, args.warmup, state)
            times[name].append(t)
            print(f"  repeat {repeat + 1} {name:<16} {t:.3f} s/step", flush=True)
    base = statistics.median(next(iter(times.values())))
    print(f"\n{'variant':<16} {'s/step':>8} {'speed':>7}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<16} {med:8.3f} {base / med:6.2f}x")


if __name__ == "__main__":
    main()
