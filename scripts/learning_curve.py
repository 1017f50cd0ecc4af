"""Learning curve of a run from its TensorBoard events: minutes of training vs the validation metrics.

    python scripts/learning_curve.py RUN_DIR_OR_EVENT_DIR [--target 0.95]

Minutes are ``train/minutes`` (training wall time without validation, logged
by the progress callback) at the step of each validation. Prints a table and
the first validation where ``val/EIR`` reaches ``--target``. A run with a held-out-style
validation split also gets its ``val_heldout/...`` columns.
"""

from __future__ import annotations

import argparse
import bisect
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

KEYS = (
    "val/mAP",
    "val/mAP_50",
    "val/segm_mAP",
    "val/dv_mAP",
    "val/dv_mAP_50",
    "val/EIR",
    "val/plate_precision",
    "val_heldout/mAP",
    "val_heldout/dv_mAP_50",
    "val_heldout/EIR",
)


def load_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from every event file under ``path``."""
    files = sorted(path.rglob("events.out.tfevents.*")) if path.is_dir() else [path]
    if not files:
        raise SystemExit(f"no TensorBoard event files under {path}")
    scalars: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(values) for tag, values in scalars.items()}


def minutes_at(minutes: list[tuple[int, float]], step: int) -> float:
    """Training minutes at the last logged step <= ``step``."""
    steps = [s for s, _ in minutes]
    i = bisect.bisect_right(steps, step) - 1
    return minutes[max(i, 0)][1] if minutes else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--target", type=float, default=0.95)
    args = parser.parse_args()
    scalars = load_scalars(args.run)
    minutes = scalars.get("train/minutes", [])
    keys = [k for k in KEYS if k in scalars]
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for step, value in scalars[key]:
            rows.setdefault(step, {})[key] = value
    names = [k.split("/")[1] if k.startswith("val/") else k.replace("val_heldout/", "heldout_") for k in keys]
    print(f"{'step':>6} {'minutes':>8} " + " ".join(f"{n:>15}" for n in names))
    reached = None
    for step in sorted(rows):
        m = minutes_at(minutes, step)
        cells = " ".join(f"{rows[step][k]:>15.4f}" if k in rows[step] else f"{'-':>15}" for k in keys)
        print(f"{step:>6} {m:>8.1f} {cells}")
        if reached is None and rows[step].get("val/EIR", -1) >= args.target:
            reached = (step, m)
    if reached:
        print(f"val/EIR >= {args.target} first at step {reached[0]}, {reached[1]:.1f} minutes of training")
    else:
        print(f"val/EIR never reached {args.target}")


if __name__ == "__main__":
    main()
