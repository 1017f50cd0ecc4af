"""How fast does the character reader learn on its own? Its training loss by step, for a few variants.

    python scripts/reader_curve.py [--steps 300] [--threads 2] [--variant NAME=key=value,...]

The reader (:class:`lpr.models.char_reader.CharReader`) trains inside the
detector's step, on the ground-truth character boxes of each batch. This trains
it alone, on the same crops: batches of the plate recipe's training loader,
resized by the model's transform as in training, cycled; AdamW, constant lr.
It prints the mean loss of every 50 steps and the seconds taken, per variant.
A variant sets ``norm`` (``batch``: the reader as built; ``group``: GroupNorm
in its place; ``none``), ``lr``, ``jitter`` or ``channels`` (``16/32/64``).
Default variants: batch, group and none at lr 1e-3.
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra.utils import instantiate
from plate_setup import plate_config_and_data
from torch import nn

from lpr.models.char_reader import CharReader
from lpr.plates import character_labels

DEFAULT_VARIANTS = ["batch=norm=batch", "group=norm=group", "none=norm=none"]


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition("=")
    values: dict = {"norm": "batch", "lr": 1e-3, "jitter": 0.1, "channels": (32, 64, 128)}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        if key not in values:
            raise SystemExit(f"unknown variant setting {key!r} in {text!r}: use one of {sorted(values)}")
        if key == "channels":
            values[key] = tuple(int(c) for c in value.split("/"))
        elif key == "norm":
            values[key] = value
        else:
            values[key] = float(value)
    return name, values


def build_reader(labels: list[int], norm: str, jitter: float, channels: tuple[int, ...]) -> CharReader:
    reader = CharReader(labels, size=32, context=0.2, channels=channels, jitter=jitter)
    for i, layer in enumerate(reader.features):
        if isinstance(layer, nn.BatchNorm2d) and norm != "batch":
            c = layer.num_features
            reader.features[i] = nn.GroupNorm(min(16, c), c) if norm == "group" else nn.Identity()
    return reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batches", type=int, default=150, help="distinct training batches, cycled")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", action="append", default=None, help="NAME=key=value,... (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, datamodule = plate_config_and_data([])
    transform = instantiate(cfg.model, classes=datamodule.classes, _recursive_=False).model.transform
    batches = []
    for images, targets in datamodule.train_dataloader():
        with torch.no_grad():
            resized, targets = transform(images, targets)
        batches.append((resized.tensors, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]))
        if len(batches) == args.batches:
            break
    labels = character_labels(datamodule.classes)
    crops = sum(int(torch.isin(t["labels"], torch.tensor(labels)).sum()) for _, ts in batches for t in ts)
    print(
        f"data: {cfg.data.root} | {len(batches)} batches of {cfg.data.batch_size} images, {crops} character crops "
        f"(model input {cfg.model.net.min_size}x{cfg.model.net.max_size}) | {len(labels)} classes | "
        f"{args.steps} steps, AdamW, {args.threads} threads"
    )
    for name, v in (parse_variant(t) for t in args.variant or DEFAULT_VARIANTS):
        torch.manual_seed(0)
        reader = build_reader(labels, v["norm"], v["jitter"], v["channels"])
        optimizer = torch.optim.AdamW(reader.parameters(), lr=v["lr"], weight_decay=1e-4)
        start, losses, row = time.perf_counter(), [], []
        for step in range(args.steps):
            images, targets = batches[step % len(batches)]
            loss = reader.loss(images, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if (step + 1) % 50 == 0:
                row.append(f"{sum(losses[-50:]) / 50:.2f}")
        seconds = time.perf_counter() - start
        print(f"{name:>10} ({v}): loss per 50 steps {' '.join(row)} | {seconds:.0f} s")


if __name__ == "__main__":
    main()
