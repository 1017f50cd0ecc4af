"""Training throughput: lpr's Lightning stack vs a bare torchvision loop, side by side.

    python scripts/bench_train.py [--steps 30] [--warmup 5] [--repeats 3] [--threads 2] [overrides ...]
    python scripts/bench_train.py --device cuda --experiment plate_gpu trainer.precision=bf16-mixed

``--device cuda`` (one GPU) adds a third side: the bare loop on one batch kept on the GPU, so
that loader-fed / cached shows what decoding and augmenting cost; ``--experiment`` picks the
recipe (``plate`` by default, ``plate_gpu`` for the GPU one).

Both sides use the same composed ``+experiment=plate`` config: the same model,
data (the cached synthetic set), batch size, DataLoader, torch threads, memory
format and precision (the recipe's: ``bf16-mixed`` on a CPU with native bf16,
where the bare forward runs under ``torch.autocast("cpu", torch.bfloat16)`` as
Lightning's does, else fp32). The
bare loop is ``model(images, targets)``, ``loss.backward()``, ``opt.step()``;
lpr is ``Trainer.fit`` with the recipe's callbacks (progress log, memory guard,
consistency check) and its TensorBoard logger, validation and checkpoint
writing off. Runs alternate (bare, lpr, bare, lpr, ...); each run times the
steps after ``--warmup``. Prints the median images/s of each side and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from plate_setup import plate_config_and_data, train_autocast

from lpr.train import _instantiate_all


class StepClock(Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def to_device(batch, device: torch.device):
    images, targets = batch
    images = [i.to(device, non_blocking=True) for i in images]

    def move(value):  # targets also carry plain values (the image id)
        return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value

    return images, [{k: move(v) for k, v in t.items()} for t in targets]


def bare_loop(cfg, datamodule, steps: int, warmup: int, device: torch.device, cached: bool = False) -> float:
    """Images/s of ``model(images, targets)``, backward and step; ``cached``: one batch, kept on the device."""
    torch.manual_seed(0)
    module = instantiate(cfg.model, classes=datamodule.classes, _recursive_=False)
    model = module.model.to(device).train()
    optimizer = instantiate(cfg.model.optimizer, params=model.parameters(), _convert_="all")
    loader = iter(datamodule.train_dataloader())
    batch = to_device(next(loader), device) if cached else None
    start = None
    for step in range(steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        images, targets = batch or to_device(next(loader), device)
        with train_autocast(cfg, device.type):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    return (steps - warmup) * datamodule.batch_size / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lpr_fit(cfg, datamodule, steps: int, warmup: int, out: Path, device: torch.device) -> float:
    torch.manual_seed(0)
    module = instantiate(cfg.model, classes=datamodule.classes, _recursive_=False)
    clock = StepClock(warmup)
    callbacks = [*_instantiate_all(cfg.callbacks), clock]
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=cfg.trainer.precision,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        logger=L.pytorch.loggers.TensorBoardLogger(out, name="", version=""),
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=datamodule)
    return (steps - warmup) * datamodule.batch_size / (clock.end - clock.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU)")
    parser.add_argument("--experiment", default="plate", help="the recipe: plate, or plate_gpu")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg, datamodule = plate_config_and_data(args.overrides, experiment=args.experiment)
    sides: dict[str, list[float]] = {"bare": [], "lpr": []} | ({"cached": []} if device.type == "cuda" else {})
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            sides["bare"].append(bare_loop(cfg, datamodule, args.steps, args.warmup, device))
            sides["lpr"].append(lpr_fit(cfg, datamodule, args.steps, args.warmup, Path(tmp) / str(r), device))
            if "cached" in sides:
                sides["cached"].append(bare_loop(cfg, datamodule, args.steps, args.warmup, device, cached=True))
            said = ", ".join(f"{name} {values[-1]:.2f} img/s" for name, values in sides.items())
            print(f"repeat {r + 1}: {said}", flush=True)
    b, o = statistics.median(sides["bare"]), statistics.median(sides["lpr"])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, torch threads {args.threads}"
    print(
        f"config: +experiment={args.experiment} {' '.join(args.overrides)} | {where}, precision "
        f"{cfg.trainer.precision}, batch {datamodule.batch_size}, workers {datamodule.num_workers}, "
        f"{args.steps} steps ({args.warmup} warm-up) x {args.repeats} repeats, alternating"
    )
    print(f"bare torchvision loop: {b:.2f} img/s (median)")
    print(f"lpr Trainer.fit:       {o:.2f} img/s (median)")
    print(f"ratio lpr / bare:      {o / b:.3f}")
    if "cached" in sides:
        c = statistics.median(sides["cached"])
        print(f"bare loop, one cached batch: {c:.2f} img/s (median); loader-fed / cached: {b / c:.3f}")


if __name__ == "__main__":
    main()
