"""What the plate recipe's training data costs: CPU time per batch of its loader, in the main process.

    python scripts/bench_data.py [--batches 30] [--threads 1] [overrides ...]

Iterates the ``+experiment=plate`` training loader with ``data.num_workers=0``
(reading, decoding, masks, the training transforms, collation; the model's own
resize and crop are part of the step, not of this) after one warm-up batch, and
prints wall and process CPU milliseconds per batch.
"""

from __future__ import annotations

import argparse
import time

import torch
from plate_setup import plate_config_and_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe, e.g. data.batch_size=4")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, datamodule = plate_config_and_data([*args.overrides, "data.num_workers=0"])
    loader = iter(datamodule.train_dataloader())
    next(loader)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.batches):
        next(loader)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"config: +experiment=plate training loader, batch {cfg.data.batch_size}, main process, "
          f"{args.threads} torch thread(s), {args.batches} batches")  # fmt: skip
    print(f"per batch: wall {wall / args.batches * 1000:.1f} ms, CPU {cpu / args.batches * 1000:.1f} ms")


if __name__ == "__main__":
    main()
