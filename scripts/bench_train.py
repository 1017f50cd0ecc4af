"""Training throughput: lpr's Lightning stack vs a bare torchvision loop, side by side.

    python scripts/bench_train.py [--steps 30] [--warmup 5] [--repeats 3] [--threads 2] [overrides ...]

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


def bare_loop(cfg, datamodule, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    module = instantiate(cfg.model, classes=datamodule.classes, _recursive_=False)
    model = module.model.train()
    optimizer = instantiate(cfg.model.optimizer, params=model.parameters(), _convert_="all")
    loader = iter(datamodule.train_dataloader())
    start = None
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        images, targets = next(loader)
        with train_autocast(cfg):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (steps - warmup) * datamodule.batch_size / (time.perf_counter() - start)


def lpr_fit(cfg, datamodule, steps: int, warmup: int, out: Path) -> float:
    torch.manual_seed(0)
    module = instantiate(cfg.model, classes=datamodule.classes, _recursive_=False)
    clock = StepClock(warmup)
    callbacks = [*_instantiate_all(cfg.callbacks), clock]
    trainer = L.Trainer(
        accelerator="cpu",
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
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, datamodule = plate_config_and_data(args.overrides)
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            bare.append(bare_loop(cfg, datamodule, args.steps, args.warmup))
            ours.append(lpr_fit(cfg, datamodule, args.steps, args.warmup, Path(tmp) / str(r)))
            print(f"repeat {r + 1}: bare {bare[-1]:.2f} img/s, lpr {ours[-1]:.2f} img/s", flush=True)
    b, o = statistics.median(bare), statistics.median(ours)
    print(
        f"config: +experiment=plate {' '.join(args.overrides)} | precision {cfg.trainer.precision}, "
        f"batch {datamodule.batch_size}, "
        f"workers {datamodule.num_workers}, torch threads {args.threads}, {args.steps} steps "
        f"({args.warmup} warm-up) x {args.repeats} repeats, alternating"
    )
    print(f"bare torchvision loop: {b:.2f} img/s (median)")
    print(f"lpr Trainer.fit:       {o:.2f} img/s (median)")
    print(f"ratio lpr / bare:      {o / b:.3f}")


if __name__ == "__main__":
    main()
