"""Where a training step's time goes: forward time per Mask R-CNN part, backward, optimizer step.

    python scripts/profile_step.py [--ckpt CKPT] [--steps 20] [--threads 2] [overrides ...]

Uses the composed ``+experiment=plate`` model and data. ``--ckpt`` starts from a
trained checkpoint (the RoI heads cost more once proposals are good: more
positive RoIs reach the mask head). Forward parts are timed with module hooks.
The forward runs under bf16 autocast when the recipe's ``trainer.precision`` is
``bf16-mixed``, as in training.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from hydra.utils import instantiate
from plate_setup import plate_config_and_data, train_autocast

from lpr.checkpoint import load

PARTS = (
    "backbone.body",
    "backbone.fpn",
    "rpn",
    "roi_heads.box_roi_pool",
    "roi_heads.box_head",
    "roi_heads.box_predictor",
    "roi_heads.mask_roi_pool",
    "roi_heads.mask_head",
    "roi_heads.mask_predictor",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, datamodule = plate_config_and_data(args.overrides)
    if args.ckpt:
        model = load(args.ckpt).model
    else:
        model = instantiate(cfg.model, classes=datamodule.classes, _recursive_=False).model
    model.train()
    optimizer = instantiate(cfg.model.optimizer, params=model.parameters(), _convert_="all")

    spent: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}
    modules = dict(model.named_modules())
    for name in PARTS:
        modules[name].register_forward_pre_hook(lambda m, a, n=name: started.__setitem__(n, time.perf_counter()))
        modules[name].register_forward_hook(
            lambda m, a, o, n=name: spent.__setitem__(n, spent[n] + time.perf_counter() - started[n])
        )

    loader = iter(datamodule.train_dataloader())
    for step in range(args.steps + 3):
        if step == 3:  # warm-up steps are not counted
            spent.clear()
        images, targets = next(loader)
        t0 = time.perf_counter()
        with train_autocast(cfg):
            losses = model(images, targets)
        t1 = time.perf_counter()
        optimizer.zero_grad()
        sum(losses.values()).backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        spent["forward (all)"] += t1 - t0
        spent["backward"] += t2 - t1
        spent["optimizer step"] += t3 - t2
    total = spent["forward (all)"] + spent["backward"] + spent["optimizer step"]
    print(
        f"{args.steps} steps, batch {datamodule.batch_size}, threads {args.threads}, {cfg.trainer.precision}, "
        f"{'from ' + args.ckpt if args.ckpt else 'fresh model'}: {total / args.steps:.3f} s/step"
    )
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<26} {seconds / args.steps * 1000:8.1f} ms/step  {100 * seconds / total:5.1f}%")


if __name__ == "__main__":
    main()
