"""Smoke tests of the user-facing scripts: each runs as a user runs it and prints its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bench_synth_prints_images_per_second():
    out = _run(str(SCRIPTS / "bench_synth.py"), "--images", "5")
    rates = re.findall(r"(training|held-out) styles: ([0-9.]+) images/s on one core at 384x288", out)
    assert [kind for kind, _ in rates] == ["training", "held-out"] and all(float(v) > 0 for _, v in rates)


def test_learning_curve_reads_both_validation_splits(fast_run):
    out_dir, *_ = fast_run
    out = _run(str(SCRIPTS / "learning_curve.py"), str(out_dir), "--target", "0.5")
    header, *rows = out.splitlines()
    assert "EIR" in header.split() and "heldout_EIR" in header.split()
    assert len([r for r in rows if re.match(r"\s+\d+\s+[0-9.]+\s", r)]) == 2  # the two validations
