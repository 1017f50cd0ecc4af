"""Sweeps: one summary per job, and a summary of all jobs at the end of a Hydra multirun.

Each job writes ``job_summary.json`` in its output dir (status, overrides, best
value and file of every watched key). :class:`SweepSummary`, a Hydra callback,
gathers them into ``<sweep dir>/sweep_summary.json`` and prints a table.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from lpr.callbacks.checkpoint import infer_mode
from lpr.outputs import make_dir, write_text

log = logging.getLogger("lpr.sweep")
JOB_SUMMARY = "job_summary.json"
SWEEP_SUMMARY = "sweep_summary.json"


def optimization_direction(key: str) -> str:
    """Optuna's direction for a metric key: the checkpoints' mode (:func:`lpr.callbacks.checkpoint.infer_mode`)."""
    return {"min": "minimize", "max": "maximize"}[infer_mode(key)]


def best_values(callbacks: list[Any]) -> dict[str, dict]:
    """``{key: {"value", "path"}}`` from the checkpoint callbacks that watch a key."""
    out = {}
    for cb in callbacks:
        key = getattr(cb, "monitor", None)
        if key and hasattr(cb, "best_model_score"):
            score = cb.best_model_score
            out[key] = {"value": float(score) if score is not None else None, "path": cb.best_model_path or None}
    return out


def write_job_summary(
    output_dir: str | Path, *, overrides: list[str], status: str, best: dict | None = None, error: str | None = None
) -> Path:
    path = make_dir(output_dir) / JOB_SUMMARY
    summary = {"job_dir": str(Path(output_dir)), "overrides": overrides, "status": status, "best": best or {}}
    if error:
        summary["error"] = error
    write_text(path, json.dumps(summary, indent=1))
    return path


def collect(sweep_dir: str | Path) -> list[dict]:
    """Every job's summary under a sweep dir, in job-number order."""
    rows = []
    for path in Path(sweep_dir).glob(f"*/{JOB_SUMMARY}"):
        rows.append(json.loads(path.read_text()))
    return sorted(rows, key=lambda r: (len(Path(r["job_dir"]).name), Path(r["job_dir"]).name))


def format_table(rows: list[dict]) -> str:
    keys = sorted({k for r in rows for k in r["best"]})
    header = ["job", "status", *keys, "overrides"]
    lines = []
    for r in rows:
        cells = [Path(r["job_dir"]).name, r["status"]]
        for k in keys:
            v = r["best"].get(k, {}).get("value")
            cells.append(f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else "-")
        cells.append(" ".join(r["overrides"]))
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*row) for row in [header, *lines])


class SweepSummary(HydraCallback):
    """Hydra callback: at the end of a multirun, ``sweep_summary.json`` and a table of every job."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        (sweep_dir / SWEEP_SUMMARY).write_text(json.dumps({"sweep_dir": str(sweep_dir), "jobs": rows}, indent=1))
        print(f"\nSweep summary ({len(rows)} jobs, {sweep_dir / SWEEP_SUMMARY}):\n{format_table(rows)}")
